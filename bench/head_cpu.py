"""``python -m bench.head_cpu``: native CPU head vs torch / naive / GEMM floor (see :mod:`inpo.profiling.native_bench`)."""

from inpo.profiling.native_bench import main

if __name__ == "__main__":
    raise SystemExit(main())
