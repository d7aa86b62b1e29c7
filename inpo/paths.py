"""Output paths checked before a long run writes to them: one message each for "a file", "under a file",
"read-only" and "a dangling link"."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_writable_path"]


def check_writable_path(path: str | os.PathLike, what: str, *, folder: bool) -> None:
    """Raise ValueError naming ``what`` when ``path`` cannot be created or written: it exists as the wrong kind
    (a file where a folder is wanted, or the reverse), it lies under a file, or we may not write in its nearest
    existing parent. Writes nothing."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{what} {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                         f"create its target or pass another path")
    if path.exists() and path.is_dir() != folder:
        kind, want = ("a file", "a directory") if folder else ("a folder", "a file path")
        raise ValueError(f"{what} {str(path)!r} is {kind}, not {want}")
    base = path.absolute() if folder else path.absolute().parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{what} {str(path)!r} is under {str(base)!r}, which is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: no permission to write in {str(base)!r} (read-only?)")
