"""TRL-style preference pairs from JSONL: one ``{"prompt", "chosen", "rejected"}`` record per line.

``chosen`` / ``rejected`` are the assistant responses as plain strings; TRL's conversational form (a list of
``{"role", "content"}`` messages, the last one the assistant's) is accepted too and reduced to the last
message's content (and the prompt to its last user message).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from inpo.data.textio import utf8_open

__all__ = ["load_pairs", "REQUIRED_FIELDS"]

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")


def _text(value, field: str, where: str, role: str) -> str:
    if isinstance(value, list):  # conversational: [{"role": ..., "content": ...}, ...]
        msgs = [m for m in value if isinstance(m, dict) and m.get("role") == role and isinstance(m.get("content"), str)]
        if not msgs:
            raise ValueError(f"{where}: {field!r} is a message list without a {role!r} message with string content")
        value = msgs[-1]["content"]
    if not isinstance(value, str):
        raise ValueError(f"{where}: {field!r} must be a string (or a list of chat messages), got {type(value).__name__}")
    if not value.strip() and field == "prompt":
        raise ValueError(f"{where}: 'prompt' is empty")
    return value


def load_pairs(path: str | os.PathLike) -> list[dict]:
    """Read and validate a JSONL file of preference pairs → ``[{"prompt", "chosen", "rejected"}, ...]``.

    Raises FileNotFoundError for a missing file and ValueError naming ``file:line`` for invalid JSON, a record
    missing a field, a non-string field, or a file with no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {str(path)!r} (expected JSONL with prompt/chosen/rejected)")
    out = []
    with utf8_open(path, what="pairs file") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
            missing = [f for f in REQUIRED_FIELDS if f not in rec]
            if missing:
                raise ValueError(f"{where}: record is missing field(s) {missing}; each record needs "
                                 f"{list(REQUIRED_FIELDS)} (has {sorted(rec)})")
            out.append({"prompt": _text(rec["prompt"], "prompt", where, "user"),
                        "chosen": _text(rec["chosen"], "chosen", where, "assistant"),
                        "rejected": _text(rec["rejected"], "rejected", where, "assistant")})
    if not out:
        raise ValueError(f"pairs file {str(path)!r} has no records")
    return out
