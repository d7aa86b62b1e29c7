"""``python -m bench.report``: see :mod:`bench.report`."""

import sys

from bench.report import main

raise SystemExit(main(sys.argv[1:]))
