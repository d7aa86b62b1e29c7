"""``inpo bench <sub>``: dispatch to each bench's ``main(argv)``, imported only when asked for.

head      fused-head microbench on GPU (``inpo.profiling.head_bench``)
head-cpu  native C++ CPU head bench (``inpo.profiling.native_bench``)
step      end-to-end training step vs TRL / naive head / Liger (``inpo.profiling.step_bench``)
iteration online-iteration cost split by phase, INPO vs SPPO vs DNO-style (``inpo.profiling.iteration_bench``)
report    bench/REPORT.md + plots from bench/results/*.jsonl (``inpo.profiling.report``)
"""

from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, tuple[str, str]] = {
    "head": ("inpo.profiling.head_bench", "fused-head fwd+bwd vs naive / torch / Liger / CCE (GPU; --smoke on CPU)"),
    "head-cpu": ("inpo.profiling.native_bench", "native C++ CPU head vs torch / naive / the GEMM floor"),
    "step": ("inpo.profiling.step_bench", "end-to-end training step: tokens/s, MFU, peak memory, OOM sweep"),
    "iteration": ("inpo.profiling.iteration_bench", "online iteration: wall time and oracle queries per phase"),
    "report": ("inpo.profiling.report", "write bench/REPORT.md and plots from the recorded results"),
}


def _usage() -> str:
    lines = ["usage: inpo bench <bench> [options]", "", "benches:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in BENCHES.items()]
    lines += ["", "`inpo bench <bench> --help` shows its options; every bench has --smoke (seconds on CPU)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        import difflib

        near = difflib.get_close_matches(name, BENCHES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"inpo bench: unknown bench {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = BENCHES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # a dependency of the bench is missing: that is the bench's own error to show
            raise
        print(f"inpo bench {name}: {module_name} does not exist yet in this checkout — this bench is not available",
              file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
