"""Measurement: environment records and result files (``record``), timers with warm-up and quantiles plus peak
memory (``timing``), MFU (``mfu``), NVML clocks/energy (``nvml``), the OOM sweep (``sweep``), profiler traces
(``trace``), the benches (``step_bench``, ``iteration_bench``, ``head_bench``, ``native_bench``) and the report
(``report``). ``inpo bench <name>`` dispatches through ``inpo.profiling.cli``; GPU extras sit behind optional imports.
"""

from inpo.utils.record import append_jsonl, device_slug, environment_info

__all__ = ["append_jsonl", "device_slug", "environment_info"]
