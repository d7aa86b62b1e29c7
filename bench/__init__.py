"""Benchmarks and experiments: scripts over inpo's public API, run from a source checkout (not installed).

One entry point per bench, ``python -m bench.<name>`` from the repository root::

    head          the fused head on a GPU (fwd+bwd vs naive / torch / Liger / CCE, the 6NHV floor)
    head_cpu      the native C++ CPU head vs torch / naive / the 8NHV floor at the measured fp32 peak
    step          end-to-end training step vs TRL DPOTrainer(ipo) / naive head / Liger, with the OOM sweep
    step_cpu      the same side by side on a CPU, interleaved, with fresh-process peak memory
    generation    HF generate vs vLLM tokens/s (run it with the CPU vLLM venv's interpreter to include vLLM)
    iteration     one online iteration's cost by phase, INPO vs SPPO vs DNO-style
    filter_error  the opt-in gradient filter's error (fp64 simulation)
    report        bench/REPORT.md and its plots from bench/results/*.jsonl

Every bench checks its output paths before it measures anything (a clear message and exit 2, never a
finished run lost to an unwritable ``--out``). Shared tools live in :mod:`bench.lib`; the report
generator in :mod:`bench.report`; recorded results in ``bench/results/``. ``experiment_*`` and ``vllm_sampler`` are
the experiments and the vLLM sampler check the README quotes.
"""
