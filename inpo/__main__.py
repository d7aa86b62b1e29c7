"""``python -m inpo``: the same dispatcher as the ``inpo`` console script; after Ctrl-C or a multi-process run it
exits through :func:`inpo.cli.leave` (see there why the interpreter's teardown cannot be trusted then)."""

from inpo.cli import leave, main, must_leave_at_once

code = main()
if must_leave_at_once(code):
    leave(code)
raise SystemExit(code)
