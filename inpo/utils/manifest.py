"""A folder's manifest: the entries a command wrote there, recorded before it writes them, so that a later run of
the command replaces or deletes exactly those -- never a user's file, never by a name pattern.

The manifest is a JSON-lines file: a header object (its ``kind`` says which command owns the folder), then one
``{"path": name}`` per top-level entry. ``inpo train`` keeps its run directory's in ``.inpo-run`` (also the mark of
an inpo run directory), ``inpo game --out DIR`` in ``DIR/.inpo-game``.

Imports nothing from inpo but :mod:`inpo.utils.io`.
"""

from __future__ import annotations

import json
from pathlib import Path

from inpo.utils.io import append_jsonl, atomic_write_text

__all__ = ["read_manifest", "write_manifest", "add_to_manifest", "unrecorded"]


def read_manifest(path, kind: str) -> list[str] | None:
    """The entries recorded in the manifest file ``path``, in order without repeats (plain names only: an entry
    that is a path is ignored); None when there is no such file, or it is not a manifest of ``kind`` (e.g. an older
    plain-text marker)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not records or not isinstance(records[0], dict) or records[0].get("kind") != kind:
        return None
    names = [r["path"] for r in records[1:] if isinstance(r, dict) and _plain_name(r.get("path"))]
    return list(dict.fromkeys(names))


def _plain_name(name) -> bool:
    """One entry directly in the folder: never a path that could leave it (an edited manifest deletes nothing else)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def write_manifest(path, kind: str, about: str, entries: list[str] = ()) -> Path:
    """(Re)write the manifest ``path`` atomically: the header, then ``entries``."""
    lines = [{"kind": kind, "about": about}] + [{"path": e} for e in entries]
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in lines))


def add_to_manifest(path, name: str) -> None:
    """Append ``name`` to the manifest ``path`` (fsynced before the caller writes the entry)."""
    append_jsonl(path, {"path": name})


def unrecorded(folder, names, recorded) -> list[str]:
    """Those of ``names`` that exist in ``folder`` (a dangling link included) and are not in ``recorded``."""
    folder, mine = Path(folder), set(recorded or ())
    return sorted(n for n in names if n not in mine and ((folder / n).exists() or (folder / n).is_symlink()))
