"""Output paths checked before a bench measures anything: a run of minutes must not end in an unwritable path."""

from __future__ import annotations

import os

from inpo.paths import check_writable_path


def output_problem(prog: str, files: dict[str, str | os.PathLike | None] | None = None,
                   folders: dict[str, str | os.PathLike | None] | None = None) -> str | None:
    """The first output path that cannot be written, as a message naming ``prog``, the flag and the path (None when
    every one can be). ``files`` / ``folders`` map a flag (``--out``) to its path; None entries are not given."""
    wanted = [(flag, p, False) for flag, p in (files or {}).items()] + \
             [(flag, p, True) for flag, p in (folders or {}).items()]
    for flag, path, folder in wanted:
        if path is None:
            continue
        try:
            check_writable_path(path, flag, folder=folder)
        except ValueError as exc:
            return f"{prog}: {exc}; nothing was run"
    return None
