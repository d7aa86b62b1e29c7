"""Data for training: the embedded default task's tokenizer and prompts, TRL-format pairs and prompt files, the
one encoder of text into token ids (:mod:`inpo.data.chat`: chat templates, truncation, stop tokens), packing.

Kept light on purpose: nothing heavy is imported here (``inpo.data.chat`` is pure Python), so
``import inpo.data.prompts`` never pays for transformers. ``inpo.data.encode_pair(tokenizer, record)`` is the
public entry point for a preference record in any TRL format.
"""

from inpo.data.chat import (Truncation, encode_completion, encode_pair, encode_prompt, normalize_pair,
                            stop_token_ids, use_plain_text)

__all__ = ["encode_pair", "encode_prompt", "encode_completion", "normalize_pair", "stop_token_ids",
           "use_plain_text", "Truncation"]
