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

import os
import sys

from inpo.data.chat import normalize_pair
from inpo.utils.io import check_input_file, iter_jsonl

__all__ = ["load_pairs", "REQUIRED_FIELDS"]

REQUIRED_FIELDS = ("chosen", "rejected")  # plus "prompt" unless chosen/rejected carry it


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(str(m.get("content", "")) for m in value)


def load_pairs(path: str | os.PathLike, *, report=None) -> list[dict]:
    """Read and validate a JSONL file of preference pairs → ``[{"prompt", "chosen", "rejected"}, ...]``.

    A pair whose chosen and rejected responses are the same (both empty included) carries no preference: it is
    dropped, and ``report`` (default: a line on stderr) says how many. Pairs with one empty response are kept (the
    empty one is still scored on its end-of-turn token) and counted in the same line.

    Raises FileNotFoundError for a missing file and ValueError naming ``file:line`` for invalid JSON, a record
    missing a field, a field of the wrong type, a folder, a file with no records, or one with no pair left.
    """
    path = check_input_file(path, "pairs file", "JSONL with prompt/chosen/rejected")
    out = [normalize_pair(rec, where) for where, rec in iter_jsonl(path, what="pairs file")]
    if not out:
        raise ValueError(f"pairs file {str(path)!r} has no records")
    kept = [r for r in out if r["chosen"] != r["rejected"]]
    empty = sum(1 for r in kept if not _text(r["chosen"]).strip() or not _text(r["rejected"]).strip())
    notes = []
    if len(kept) < len(out):
        notes.append(f"dropped {len(out) - len(kept)} of {len(out)} pairs whose chosen and rejected responses are "
                     f"the same (no preference to learn)")
    if empty:
        notes.append(f"{empty} pair(s) have an empty chosen or rejected response (kept)")
    if not kept:
        raise ValueError(f"pairs file {str(path)!r}: every one of its {len(out)} pairs has chosen == rejected; "
                         f"nothing to train on")
    if notes:
        (report or (lambda m: print(m, file=sys.stderr, flush=True)))(f"[inpo] pairs file {path}: " + "; ".join(notes))
    return kept
