"""How text becomes token ids: chat templates, TRL's dataset formats, truncation and generation stop tokens.

One place for every encoder of the project -- offline pairs, online samples turned into training sequences,
log-prob precompute, the SFT warm start, evaluation and every sampler -- so they all agree:

* **Chat template, whole conversation** (as TRL 1.16 does): ``prompt_ids + chosen_ids`` is exactly
  ``apply_chat_template(prompt + [assistant turn])``: the response ends with the template's end-of-turn token and
  whatever follows it (ChatML's ``<|im_end|>\\n``, Llama-3's ``<|eot_id|>``), not with a bare eos. The response
  starts where the prompt's rendering (with its generation prompt) and the whole conversation's first differ
  (:func:`common_prefix_length`; for a pair, the earlier of chosen's and rejected's), so no response token is lost
  when the two renderings disagree at the seam: a reasoning template that opens ``<think>`` in the generation
  prompt only, or a generation prompt ending in a space that merges with the response's first word. The prompt
  then ends before the differing tokens, as in TRL (one warning per tokenizer names them).
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
           "use_plain_text", "is_plain_text", "encode_prompt", "encode_completion", "encode_responses", "encode_pair",
           "common_prefix_length", "record_origin", "stop_token_ids", "end_of_turn_id", "Truncation",
           "TRUNCATION_MODES"]

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


class _Record(dict):
    """A normalised record that remembers where it came from (``file:line``), for error messages."""

    where: str | None = None


def record_origin(record) -> str | None:
    """``file:line`` of a record read by :func:`inpo.data.pairs.load_pairs` (None for others)."""
    return getattr(record, "where", None)


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
    out = _Record(prompt=prompt, chosen=chosen, rejected=rejected)
    out.where = where
    return out


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


def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> list[int]:
    try:
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True))
    except Exception as exc:  # jinja2's TemplateError (raise_exception in the template), UndefinedError, ...
        if not type(exc).__module__.startswith("jinja2"):
            raise
        roles = ", ".join(dict.fromkeys(m.get("role", "?") for m in messages))
        raise ValueError(f"{where}: the chat template of tokenizer {_name(tokenizer)!r} fails on this conversation "
                         f"(roles: {roles}): {exc}") from None


def _memo(tokenizer) -> dict:
    memo = getattr(tokenizer, "_inpo_chat_memo", None)
    if memo is None:
        memo = {}
        try:
            setattr(tokenizer, "_inpo_chat_memo", memo)
        except AttributeError:  # pragma: no cover - a slotted tokenizer: no caching
            pass
    return memo


def _where(where: str | None, prompt) -> str:
    return where or f"prompt {prompt_text(prompt)[:60]!r}"


def encode_prompt(tokenizer, prompt, *, where: str | None = None) -> list[int]:
    """Ids of ``prompt`` as generation starts from it: the template with its generation prompt, or plain text.
    Errors (a template that fails on the conversation, a conversation under plain text) name ``where`` (a
    ``file:line``) or the prompt."""
    prompt = check_prompt(prompt, where or "prompt")
    _check_template(tokenizer)
    if is_plain_text(tokenizer):
        if not isinstance(prompt, str):
            raise ValueError(f"{_where(where, prompt)}: a conversational prompt (a list of messages) needs a chat "
                             f"template; the tokenizer is set to plain text (chat_template: none / --no-chat-template)")
        ids = _ids(tokenizer(prompt)["input_ids"])
    else:
        ids = _render(tokenizer, as_messages(prompt), True, _where(where, prompt))
    if not ids:
        raise ValueError(f"{_where(where, prompt)}: the prompt encodes to no tokens")
    return ids


def _response_messages(response, where: str) -> list[dict]:
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return _check_messages(response, where)


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """Number of leading tokens ``ids`` and ``other`` share (TRL 1.16's ``common_prefix_length``)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


def _render_full(tokenizer, prompt, response, where: str) -> list[int]:
    """The whole conversation's ids: the template on prompt + response turn(s), or ``prompt + response + eos``."""
    if is_plain_text(tokenizer):
        if not isinstance(response, str):
            raise ValueError(f"{where}: a conversational response needs a chat template; the tokenizer is set to "
                             f"plain text (chat_template: none / --no-chat-template)")
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {_name(tokenizer)!r} has no eos token: plain-text responses could never end")
        text = response if response.endswith(tokenizer.eos_token) else response + tokenizer.eos_token
        return _ids(tokenizer(prompt + text)["input_ids"])
    return _render(tokenizer, as_messages(prompt) + _response_messages(response, f"{where}: response"), False, where)


def encode_responses(tokenizer, prompt, responses: Sequence, *, prompt_ids: list[int] | None = None,
                     where: str | None = None) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [response_ids, ...])`` of responses to one prompt, split as TRL 1.16 splits a pair: each
    ``prompt_ids + response_ids[i]`` is the whole conversation's rendering, and the responses start where the
    prompt's rendering (with its generation prompt; ``prompt_ids`` may pass a cached :func:`encode_prompt`) and
    the conversations' first differ, the earliest over ``responses``. When that is before the prompt's end (the
    template renders the prompt differently alone, or tokens merge across the seam), the rest of the prompt is
    left out of the sequence and a warning (once per tokenizer) names it, as TRL does."""
    where = _where(where, prompt)
    p = encode_prompt(tokenizer, prompt, where=where) if prompt_ids is None else list(prompt_ids)
    fulls = [_render_full(tokenizer, prompt, r, where) for r in responses]
    cut = min((common_prefix_length(p, f) for f in fulls), default=len(p))
    memo = _memo(tokenizer)
    if cut < len(p) and not memo.get("seam_warned"):
        memo["seam_warned"] = True
        warnings.warn(f"tokenizer {_name(tokenizer)!r}: the prompt's ids are not a prefix of the whole conversation's "
                      f"(the template renders the prompt differently alone, or tokens merge across the seam); as in "
                      f"TRL 1.16 the response starts where they differ, and the prompt's end "
                      f"{tokenizer.decode(p[cut:])!r} is left out of the training sequence. Shown once.", stacklevel=2)
    out = [f[cut:] for f in fulls]
    if any(not r for r in out):
        raise ValueError(f"{where}: a response encodes to no tokens")
    return p[:cut], out


def encode_completion(tokenizer, prompt, response, *, prompt_ids: list[int] | None = None,
                      where: str | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` with ``prompt_ids + response_ids`` the rendering of the whole conversation
    (:func:`encode_responses` for one response). ``response`` is a string (one assistant turn) or a list of
    messages; ``prompt_ids`` may pass a cached :func:`encode_prompt` result."""
    p, (r,) = encode_responses(tokenizer, prompt, [response], prompt_ids=prompt_ids, where=where)
    return p, r


def encode_pair(tokenizer, record: Mapping) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` of a preference record in any TRL format.

    ``prompt_ids + chosen_ids`` equals the chat template's rendering of the full conversation (prompt turns and
    the chosen assistant turn), likewise for rejected (split at the common prefix, :func:`encode_responses`); with
    :func:`use_plain_text`, ``tokenizer(prompt)`` and ``tokenizer(prompt + chosen + eos)``. Errors name the
    record's ``file:line`` when it came from :func:`inpo.data.pairs.load_pairs`.
    """
    where = record_origin(record)
    rec = normalize_pair(record, where or "record")
    p, (c, r) = encode_responses(tokenizer, rec["prompt"], [rec["chosen"], rec["rejected"]], where=where)
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
