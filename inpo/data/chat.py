"""How text becomes token ids: chat templates, TRL's dataset formats, truncation and generation stop tokens.

One place for every encoder of the project -- offline pairs, online samples turned into training sequences,
log-prob precompute, the SFT warm start, evaluation and every sampler -- so they all agree:

* **Chat template, whole conversation** (as TRL does): a response's ids are the difference between the
  template's rendering of the full conversation and of the prompt with its generation prompt, so
  ``prompt_ids + chosen_ids`` is exactly ``apply_chat_template(prompt + [assistant turn])``: the response
  ends with the template's end-of-turn token and whatever follows it (ChatML's ``<|im_end|>\\n``, Llama-3's
  ``<|eot_id|>``), not with a bare eos.
* **Plain text** (base models without a template, opted into with :func:`use_plain_text`, i.e. config
  ``chat_template: none`` / ``--no-chat-template``): ``tokenizer(prompt)`` (with the tokenizer's own special
  tokens, e.g. a bos) and ``tokenizer(prompt + response + eos_token)``, TRL's standard-format recipe. A
  tokenizer with neither a template nor the opt-in is an error, never a silent guess.
* **Formats**: a prompt is a string (standard) or a list of ``{"role", "content"}`` messages
  (conversational: system turns and earlier turns are kept); ``chosen`` / ``rejected`` are strings or
  assistant message lists; without a ``prompt`` key the shared prompt is extracted from ``chosen`` /
  ``rejected`` (TRL's implicit prompt: the longest common prefix of turns, or of text).
* **Truncation** (:class:`Truncation`): TRL's ``max_length`` with ``truncation_mode`` (``keep_start``
  cuts the end and drops a pair whose prompt alone fills ``max_length``; ``keep_end`` keeps the last
  tokens) and TRL ≤ 0.28's ``max_prompt_length`` (a prompt keeps its last tokens) / ``max_completion_length``.
* **Stop tokens** (:func:`stop_token_ids`): eos and the template's end-of-turn token, for every sampler.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["is_messages", "as_messages", "prompt_text", "prompt_key", "check_prompt", "normalize_pair",
           "use_plain_text", "is_plain_text", "encode_prompt", "encode_completion", "encode_pair",
           "stop_token_ids", "end_of_turn_id", "Truncation", "TRUNCATION_MODES"]

TRUNCATION_MODES = ("keep_start", "keep_end")
_PLAIN_ATTR = "_inpo_plain_text"  # set on the tokenizer object, so every encoder of the run sees the choice


# -- prompts and records ----------------------------------------------------------------------------------------

def is_messages(value) -> bool:
    """Whether ``value`` looks like a conversation: a non-empty list of dicts with ``role`` / ``content``."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, Mapping) and "role" in m for m in value)


def _check_messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: a conversation must be a non-empty list of {{'role', 'content'}} messages, "
                         f"got {value!r:.80}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} must be {{'role': str, 'content': str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def check_prompt(prompt, where: str = "prompt"):
    """A validated prompt: a non-blank string, or a conversation (list of messages) -- returned normalised.
    Anything else is a ValueError naming ``where`` (it comes from a user's data file)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where} must be a non-empty string or a list of chat messages, got an empty string")
        return prompt
    if isinstance(prompt, list):
        return _check_messages(prompt, where)
    raise ValueError(f"{where} must be a non-empty string or a list of chat messages, got {type(prompt).__name__}")


def as_messages(prompt) -> list[dict]:
    """A standard prompt as one user turn; a conversation as is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt) -> str:
    """The text a reader (or the synthetic oracle) takes as the prompt: the string, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def prompt_key(prompt) -> str:
    """A hashable key of a prompt (the string itself; a conversation's canonical JSON)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _split_implicit(chosen, rejected):
    """TRL's ``extract_prompt``: the longest common prefix of ``chosen`` and ``rejected`` is the prompt."""
    n = min(len(chosen), len(rejected))
    idx = n
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i - 1 if (i > 0 and isinstance(chosen, str) and chosen[i - 1] == " ") else i
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def normalize_pair(record: Mapping, where: str = "record") -> dict:
    """``{"prompt", "chosen", "rejected"}`` from any of TRL's preference formats (see the module doc).

    Responses come back as a string (standard) or a list of messages (conversational). Raises ValueError naming
    ``where`` and the field for anything else.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: a preference record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise ValueError(f"{where}: record is missing field(s) {missing}; a preference record needs 'chosen' and "
                         f"'rejected' (and 'prompt', unless chosen/rejected carry it), has {sorted(record)}")
    chosen, rejected = record["chosen"], record["rejected"]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, (str, list)):
            raise ValueError(f"{where}: {name!r} must be a string or a list of chat messages, got "
                             f"{type(value).__name__}")
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise ValueError(f"{where}: 'chosen' and 'rejected' must both be strings or both message lists")
    if isinstance(chosen, list):
        chosen, rejected = _check_messages(chosen, f"{where}: 'chosen'"), _check_messages(rejected, f"{where}: 'rejected'")
    if "prompt" in record:
        prompt = check_prompt(record["prompt"], f"{where}: 'prompt'")
    else:  # implicit prompt: chosen and rejected both start with it
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise ValueError(f"{where}: no 'prompt' and 'chosen' / 'rejected' share no prefix to take as the prompt")
    if isinstance(chosen, list):
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value:
                raise ValueError(f"{where}: {name!r} has no turn after the prompt")
            if value[0]["role"] != "assistant":
                raise ValueError(f"{where}: {name!r} must start with an assistant turn, got role "
                                 f"{value[0]['role']!r}")
    if isinstance(chosen, list) and isinstance(prompt, str):
        prompt = as_messages(prompt)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# -- the template or plain text -------------------------------------------------------------------------------------

def use_plain_text(tokenizer, enabled: bool = True):
    """Encode with no chat template (a base model): ``prompt`` then ``response + eos``, as TRL does for standard
    data. The choice lives on the tokenizer object, so every encoder and sampler of the run agrees."""
    setattr(tokenizer, _PLAIN_ATTR, bool(enabled))
    _memo(tokenizer).clear()
    return tokenizer


def is_plain_text(tokenizer) -> bool:
    return bool(getattr(tokenizer, _PLAIN_ATTR, False))


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _check_template(tokenizer) -> None:
    if not is_plain_text(tokenizer) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {_name(tokenizer)!r} has no chat_template. For a base model, train on plain "
                         f"text with config 'chat_template: none' (command line: --no-chat-template); otherwise "
                         f"set tokenizer.chat_template (a jinja string) and save the tokenizer")


def _ids(encoded) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list in transformers 4 and a BatchEncoding in 5."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(i) for i in encoded]


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True))


def _memo(tokenizer) -> dict:
    memo = getattr(tokenizer, "_inpo_chat_memo", None)
    if memo is None:
        memo = {}
        try:
            setattr(tokenizer, "_inpo_chat_memo", memo)
        except AttributeError:  # pragma: no cover - a slotted tokenizer: no caching
            pass
    return memo


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Ids of ``prompt`` as generation starts from it: the template with its generation prompt, or plain text."""
    prompt = check_prompt(prompt)
    _check_template(tokenizer)
    if is_plain_text(tokenizer):
        if not isinstance(prompt, str):
            raise ValueError("a conversational prompt (a list of messages) needs a chat template; the tokenizer is "
                             "set to plain text (chat_template: none)")
        ids = _ids(tokenizer(prompt)["input_ids"])
    else:
        ids = _render(tokenizer, as_messages(prompt), True)
    if not ids:
        raise ValueError(f"prompt {prompt_text(prompt)[:60]!r} encodes to no tokens")
    return ids


def _response_messages(response, where: str) -> list[dict]:
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return _check_messages(response, where)


def encode_completion(tokenizer, prompt, response, *, prompt_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` with ``prompt_ids + response_ids`` the rendering of the whole conversation.

    ``response`` is a string (one assistant turn) or a list of messages. ``prompt_ids`` may pass a cached
    :func:`encode_prompt` result.
    """
    p = encode_prompt(tokenizer, prompt) if prompt_ids is None else list(prompt_ids)
    if is_plain_text(tokenizer):
        if not isinstance(response, str):
            raise ValueError("a conversational response needs a chat template; the tokenizer is set to plain text")
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {_name(tokenizer)!r} has no eos token: plain-text responses could never end")
        text = response if response.endswith(tokenizer.eos_token) else response + tokenizer.eos_token
        full = _ids(tokenizer(prompt + text)["input_ids"])
    else:
        full = _render(tokenizer, as_messages(prompt) + _response_messages(response, "response"), False)
    if full[:len(p)] != p:  # TRL warns and slices the same way
        warnings.warn(f"tokenizer {_name(tokenizer)!r}: the prompt's ids are not a prefix of the whole "
                      f"conversation's (template or tokenizer merges across the seam); the response is taken as "
                      f"the tokens after len(prompt_ids)", stacklevel=2)
    r = full[len(p):]
    if not r:
        raise ValueError(f"the response to {prompt_text(prompt)[:60]!r} encodes to no tokens")
    return p, r


def encode_pair(tokenizer, record: Mapping) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` of a preference record in any TRL format.

    ``prompt_ids + chosen_ids`` equals the chat template's rendering of the full conversation (prompt turns and
    the chosen assistant turn), likewise for rejected; with :func:`use_plain_text`, ``tokenizer(prompt)`` and
    ``tokenizer(prompt + chosen + eos)``.
    """
    rec = normalize_pair(record)
    p = encode_prompt(tokenizer, rec["prompt"])
    _, c = encode_completion(tokenizer, rec["prompt"], rec["chosen"], prompt_ids=p)
    _, r = encode_completion(tokenizer, rec["prompt"], rec["rejected"], prompt_ids=p)
    return p, c, r


# -- stopping -----------------------------------------------------------------------------------------------------

def _special_ids(tokenizer) -> set[int]:
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (ChatML ``<|im_end|>``, Llama-3
    ``<|eot_id|>``, the embedded task's ``<|eos|>``); None in plain-text mode or when the template adds none."""
    if is_plain_text(tokenizer):
        return None
    memo = _memo(tokenizer)
    if "eot" not in memo:
        _check_template(tokenizer)
        probe = "Yes."
        _, r = encode_completion(tokenizer, "Hi.", probe)
        special = _special_ids(tokenizer)
        content = _ids(tokenizer(probe, add_special_tokens=False)["input_ids"])
        tail = r[len(content):] if r[:len(content)] == content else r
        memo["eot"] = next((t for t in tail if t in special), None)
    return memo["eot"]


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a sampled response: eos and the template's end-of-turn token (deduplicated, eos first).
    Every sampler (HF generate, vLLM) stops on these."""
    out = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    eot = end_of_turn_id(tokenizer)
    if eot is not None and eot not in out:
        out.append(int(eot))
    if not out:
        raise ValueError(f"tokenizer {_name(tokenizer)!r} has neither an eos token nor a template end-of-turn token: "
                         f"generation could never stop early")
    return out


# -- truncation ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Truncation:
    """TRL's length limits on one (prompt, response) sequence.

    ``max_prompt_length``: a prompt keeps its last tokens. ``max_completion_length``: a response keeps its first
    tokens. ``max_length`` (prompt + response): ``mode="keep_start"`` keeps the first ``max_length`` tokens and
    drops a sequence whose prompt alone has ``max_length`` tokens or more (nothing of the response would be
    left); ``mode="keep_end"`` keeps the last ``max_length`` tokens (when the whole prompt goes, the first kept
    token is the context of the rest and is not scored). None = no limit.
    """

    max_length: int | None = None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    mode: str = "keep_start"

    def __post_init__(self):
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a context token and a scored token), got {self.max_length}")
        if self.mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {self.mode!r}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_length, self.max_prompt_length, self.max_completion_length))

    def prompt(self, ids: Sequence[int]) -> list[int]:
        """A prompt as generation sees it: its last ``max_prompt_length`` tokens."""
        ids = list(ids)
        return ids[-self.max_prompt_length:] if self.max_prompt_length is not None else ids

    def apply(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[list[int], list[int]] | None:
        """The truncated ``(prompt_ids, response_ids)``, or None when the sequence must be dropped."""
        p, r = self.prompt(prompt_ids), list(response_ids)
        if self.max_completion_length is not None:
            r = r[:self.max_completion_length]
        n = self.max_length
        if n is None or len(p) + len(r) <= n:
            return p, r
        if self.mode == "keep_start":
            if len(p) >= n:
                return None
            return p, r[:n - len(p)]
        keep_p = max(1, len(p) - (len(p) + len(r) - n))
        seq = (p + r)[-n:]
        return seq[:keep_p], seq[keep_p:]
