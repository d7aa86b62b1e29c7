"""Preference pairs from JSONL in any of TRL's formats, one record per line.

* standard, explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``;
* conversational, explicit prompt: ``{"prompt": [messages...], "chosen": [assistant turn], "rejected": [...]}``
  (system messages and earlier turns of the prompt are kept and go through the chat template);
* implicit prompt (standard or conversational): ``{"chosen": ..., "rejected": ...}`` carrying the shared
  prompt, which is extracted as their longest common prefix (TRL's ``extract_prompt``).

Records come back as ``{"prompt", "chosen", "rejected"}`` (see :func:`inpo.data.chat.normalize_pair`); they
are encoded with :func:`inpo.data.chat.encode_pair`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from inpo.data.chat import normalize_pair
from inpo.data.textio import utf8_open

__all__ = ["load_pairs", "REQUIRED_FIELDS"]

REQUIRED_FIELDS = ("chosen", "rejected")  # plus "prompt" unless chosen/rejected carry it


def load_pairs(path: str | os.PathLike) -> list[dict]:
    """Read and validate a JSONL file of preference pairs → ``[{"prompt", "chosen", "rejected"}, ...]``.

    Raises FileNotFoundError for a missing file and ValueError naming ``file:line`` for invalid JSON, a record
    missing a field, a field of the wrong type, or a file with no records.
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
            out.append(normalize_pair(rec, where))
    if not out:
        raise ValueError(f"pairs file {str(path)!r} has no records")
    return out
