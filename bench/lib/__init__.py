"""Measurement tools the benches share (not installed with the package): timers with warm-up and quantiles,
the measured GEMM peak, peak memory (device and process RSS), NVML clocks/energy, the OOM sweep, profiler traces,
and the one table of model shapes the benches run."""
