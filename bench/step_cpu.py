"""`python -m bench.step_cpu` = `inpo bench step-cpu` (see `inpo.profiling.step_cpu_bench`)."""

import sys

from inpo.profiling.step_cpu_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
