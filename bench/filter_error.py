"""``python -m bench.filter_error``: the opt-in gradient filter's error, fp64 simulation (see :mod:`inpo.profiling.filter_error`)."""

from inpo.profiling.filter_error import main

if __name__ == "__main__":
    raise SystemExit(main())
