"""`python -m bench.step` = `inpo bench step` (see `inpo.profiling.step_bench`)."""

import sys

from inpo.profiling.step_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
