"""``python -m inpo``: the same dispatcher as the ``inpo`` console script."""

import os
import sys

from inpo.cli import INTERRUPTED, main

code = main()
if code == INTERRUPTED:
    # A Ctrl-C that lands inside code run by ``exec(<str>)`` (dataclasses build their methods that way, so any lazy
    # ``import torch._dynamo`` is such a place) is marked "unhandled" by CPython (3.10-3.13 seen) even though
    # ``dispatch`` caught it; under ``python -m`` the interpreter then kills itself with SIGINT after exiting instead
    # of returning 130. Run the exit handlers, flush, and leave with 130 directly. (The console script and
    # ``python file.py`` exit through another path that never looks at the mark.)
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
