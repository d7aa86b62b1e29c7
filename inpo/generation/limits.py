"""Lengths and memory of sampling, one rule for every sampler.

* :func:`context_length`: the model's context window, read from its config the way vLLM reads it (the smallest of
  the position-limit keys, Cohere's ``model_max_length``, a linear / dynamic RoPE scaling factor), so the HF sampler
  and the vLLM engine agree on it.
* :func:`check_prompt_lengths`: every prompt, after TRL's ``max_prompt_length`` truncation, plus ``max_new_tokens``
  must fit that window. Checked before an engine starts and on every call: vLLM would otherwise cut the new tokens of
  a prompt near the limit short (HF would not) and fail after engine start on one over it.
* :func:`kv_bytes_per_token` / :func:`cpu_kv_cache_bytes`: the CPU KV cache sized from what a run samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["context_length", "check_prompt_lengths", "SamplingPlan", "kv_bytes_per_token", "cpu_kv_cache_bytes",
           "CPU_KV_BLOCK_TOKENS"]

# vLLM's position-limit keys, in its order (vllm/transformers_utils/model_arch_config_convertor.py)
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                  "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
_DEFAULT_CONTEXT = 2048  # vLLM's (and its warning's) assumption when a config names none
_UNSCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
CPU_KV_BLOCK_TOKENS = 128  # vLLM's CPU KV block


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _rope_factor(config) -> float:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(params, dict):
        return 1.0
    layers = [p for p in params.values() if isinstance(p, dict)] or [params]  # per-layer-type dicts or one dict
    factor = 1.0
    for p in layers:
        kind = p.get("rope_type", p.get("type", "default"))
        if kind not in _UNSCALED_ROPE and kind != "default" and p.get("factor") is not None:
            factor = float(p["factor"])
    return factor


def context_length(config) -> int:
    """The model's context window in tokens (prompt + response), as vLLM derives its default ``max_model_len`` for a
    generating model (the tokenizer's ``model_max_length`` is not consulted: vLLM reads it for pooling models only)."""
    text = _text_config(config)
    found = [int(v) for k in _POSITION_KEYS if isinstance(v := getattr(text, k, None), (int, float)) and v > 0]
    n = min(found) if found else _DEFAULT_CONTEXT
    cohere = getattr(text, "model_max_length", None)
    if isinstance(cohere, int) and cohere > 0:
        n = cohere
    if "gemma3" not in str(getattr(config, "model_type", "")):
        n = int(n * _rope_factor(config))
    return n


def check_prompt_lengths(lengths: Sequence[int], max_new_tokens: int, context: int, *,
                         name: Callable[[int], str] | None = None, max_prompt_length: int | None = None,
                         limit_name: str = "the model's context") -> None:
    """Raise ValueError naming the first prompt whose ``length + max_new_tokens`` exceeds ``context``.

    ``lengths`` are prompt token counts *after* ``max_prompt_length`` truncation; ``name(i)`` says which prompt it is
    (its list and start). The message says what to change.
    """
    budget = context - max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {limit_name} of {context} "
                         f"tokens; lower max_new_tokens")
    for i, n in enumerate(lengths):
        if n > budget:
            which = name(i) if name is not None else f"prompt {i}"
            fix = (f"set max_prompt_length <= {budget} (TRL's truncation: a prompt keeps its last tokens; now "
                   f"{max_prompt_length}) or lower max_new_tokens")
            raise ValueError(f"{which} has {n} tokens: with max_new_tokens={max_new_tokens} it needs {n + max_new_tokens}"
                             f" > {limit_name} ({context} tokens); {fix}")


@dataclass(frozen=True)
class SamplingPlan:
    """What a run will sample, for ``sampler: auto`` (:mod:`inpo.generation.cost`) and the vLLM engine's sizing.

    ``calls``: ``(rows, prompt tokens over those rows)`` of each sampler call; every response gets at most
    ``max_new_tokens``; ``longest_prompt``: tokens of the longest prompt (after truncation); ``weight_updates``: how
    many times the sampler is pointed at new weights.
    """

    calls: tuple[tuple[int, int], ...]
    max_new_tokens: int
    longest_prompt: int
    weight_updates: int = 0

    @classmethod
    def of(cls, calls: Sequence[tuple[Sequence[int], int]], max_new_tokens: int, weight_updates: int = 0):
        """From ``(prompt token counts, samples per prompt)`` of each call."""
        calls = [(list(lengths), k) for lengths, k in calls]
        return cls(tuple((len(lengths) * k, sum(lengths) * k) for lengths, k in calls), max_new_tokens,
                   max((max(lengths) for lengths, _ in calls if lengths), default=0), weight_updates)

    @property
    def rows(self) -> int:
        return sum(r for r, _ in self.calls)

    @property
    def new_tokens(self) -> int:
        """At most this many sampled tokens."""
        return self.rows * self.max_new_tokens

    @property
    def rows_per_call(self) -> int:
        return max((r for r, _ in self.calls), default=0)

    @property
    def longest_sequence(self) -> int:
        return self.longest_prompt + self.max_new_tokens


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """KV cache bytes one token takes over all layers: 2 (K and V) × layers × KV heads × head dim × dtype size."""
    text = _text_config(config)
    layers = int(text.num_hidden_layers)
    heads = int(getattr(text, "num_attention_heads"))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def _available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def cpu_kv_cache_bytes(per_token: int, max_model_len: int, plan: SamplingPlan | None, *, max_num_seqs: int = 256,
                       fraction_of_available: float = 0.25) -> int:
    """The CPU engine's KV cache: room for every row of the run's largest call at once (up to vLLM's ``max_num_seqs``
    running sequences, each ``plan.longest_sequence`` tokens), at least one ``max_model_len`` sequence (vLLM refuses
    to start with less), at most ``fraction_of_available`` of the memory available now. Without a plan: room for
    64 sequences of ``max_model_len``, within the same cap. ValueError when one sequence does not fit at all."""
    block = CPU_KV_BLOCK_TOKENS

    def blocks(tokens: int) -> int:
        return math.ceil(tokens / block)

    one = (blocks(max_model_len) + 1) * block * per_token
    if plan is not None and plan.rows:
        seqs = min(plan.rows_per_call, max_num_seqs)
        want = seqs * (blocks(min(plan.longest_sequence, max_model_len)) + 1) * block * per_token
    else:
        want = 64 * one
    available = _available_memory_bytes()
    if available and one > available:
        raise ValueError(f"the vLLM KV cache for one {max_model_len}-token sequence needs {one / 2**30:.1f} GiB, more "
                         f"than the {available / 2**30:.1f} GiB available; lower vllm_max_model_length (or "
                         f"max_prompt_length / max_new_tokens, which size it)")
    cap = int(available * fraction_of_available) if available else want
    return max(one, min(want, cap))
