"""`python -m bench.generation` = `inpo bench generation` (see `inpo.profiling.generation_bench`); run it with the
CPU vLLM venv's interpreter to include vLLM."""

import sys

from inpo.profiling.generation_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
