"""Reading user text files (YAML configs, JSONL data, prompt lists) with errors that name the file and line."""

from __future__ import annotations

import io
import os
from pathlib import Path

__all__ = ["read_utf8", "utf8_open"]


def read_utf8(path: str | os.PathLike, *, what: str = "file") -> str:
    """The text of ``path``; a file that is not UTF-8 raises ValueError naming the file, line and column."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{what} {str(path)!r}: line {line}, column {col}: not valid UTF-8 (byte "
                         f"0x{data[exc.start]:02x}); save the file as UTF-8") from None


def utf8_open(path: str | os.PathLike, *, what: str = "file") -> io.StringIO:
    """``open(path, encoding="utf-8")`` for reading line by line, but decoded up front so that a file that is not
    UTF-8 fails naming its line (a text-mode file handle raises a bare UnicodeDecodeError mid-loop)."""
    return io.StringIO(read_utf8(path, what=what))
