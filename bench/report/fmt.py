"""Cell formatting and the Markdown table: ``table(rows, columns)`` where each column is (header, field, kind)."""

from __future__ import annotations

import math
from collections.abc import Callable

Column = tuple[str, str, "str | Callable[[dict], str]"]


def _fmt_number(v) -> str:
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def fmt(v, kind: str = "") -> str:
    """One cell: ``kind`` is ``bytes`` (MiB/GiB), ``pct``, ``x`` (a ratio), ``date`` or "" (by type)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if kind == "bytes":
        return f"{v / 2**30:.2f} GiB" if v >= 2**28 else f"{v / 2**20:.1f} MiB"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "x":
        return f"{v:.2f}×"
    if kind == "date":
        return str(v)[:16].replace("T", " ")
    if isinstance(v, bool):
        return "yes" if v else "no"
    return _fmt_number(v)


def table(rows: list[dict], columns: list[Column]) -> str:
    """Markdown table; ``columns`` = (header, field, kind) where kind is a ``fmt`` kind or a function of the row."""
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = [c[2](r) if callable(c[2]) else fmt(r.get(c[1]), c[2]) for c in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])
