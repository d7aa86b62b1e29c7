"""``inpo bench <sub>``: dispatch to each bench's ``main(argv)``, imported only when asked for.

head      fused-head microbench on GPU (``inpo.profiling.head_bench``)
head-cpu  native C++ CPU head vs the 8NHV/6NHV FLOP floor at a measured GEMM peak (``inpo.profiling.native_bench``)
step      end-to-end training step vs TRL / naive head / Liger (``inpo.profiling.step_bench``)
step-cpu  the same on this CPU, interleaved, with fresh-process peak memory (``inpo.profiling.step_cpu_bench``)
generation HF generate vs vLLM tokens/s on the CPU-scale policy (``inpo.profiling.generation_bench``)
iteration online-iteration cost split by phase, INPO vs SPPO vs DNO-style (``inpo.profiling.iteration_bench``)
report    bench/REPORT.md + plots from bench/results/*.jsonl (``inpo.profiling.report``)
"""

from __future__ import annotations

import sys

BENCHES: dict[str, tuple[str, str]] = {
    "head": ("inpo.profiling.head_bench", "fused-head fwd+bwd vs naive / torch / Liger / CCE (GPU; --smoke on CPU)"),
    "head-cpu": ("inpo.profiling.native_bench", "native C++ CPU head vs torch / naive / the FLOP floor at the measured peak"),
    "step": ("inpo.profiling.step_bench", "end-to-end training step: tokens/s, MFU, peak memory, OOM sweep"),
    "step-cpu": ("inpo.profiling.step_cpu_bench", "CPU side by side: our step vs TRL DPOTrainer(ipo) vs the naive head"),
    "generation": ("inpo.profiling.generation_bench", "CPU generation tokens/s: HF generate vs vLLM (CPU build)"),
    "iteration": ("inpo.profiling.iteration_bench", "online iteration: wall time and oracle queries per phase"),
    "report": ("inpo.profiling.report", "write bench/REPORT.md and plots from the recorded results"),
}


def main(argv: list[str] | None = None) -> int:
    from inpo.cli import dispatch

    return dispatch("inpo bench", BENCHES, list(sys.argv[1:] if argv is None else argv), noun="bench")


if __name__ == "__main__":
    raise SystemExit(main())
