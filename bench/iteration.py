"""`python -m bench.iteration` = `inpo bench iteration` (see `inpo.profiling.iteration_bench`)."""

import sys

from inpo.profiling.iteration_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
