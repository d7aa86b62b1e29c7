"""``python -m bench.head``: the fused-head microbenchmark (see :mod:`inpo.profiling.head_bench`)."""

from inpo.profiling.head_bench import main

if __name__ == "__main__":
    raise SystemExit(main())
