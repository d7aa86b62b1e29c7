"""`python -m bench.report` = `inpo bench report` (see `inpo.profiling.report`)."""

import sys

from inpo.profiling.report import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
