"""The one sampler interface: K decoded responses per prompt, reproducible for a seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

from inpo.utils.choices import SAMPLER_BACKENDS, SAMPLER_DTYPES

__all__ = ["Sampler", "BACKENDS", "DTYPES", "check_sample_args", "check_sampling_args", "row_seed"]

BACKENDS = SAMPLER_BACKENDS  # the config's ``sampler`` values
DTYPES = SAMPLER_DTYPES  # the config's ``sampler_dtype``: the vLLM engine's dtype

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit ints that spreads nearby inputs far apart."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of response ``sample_index`` of prompt ``prompt_index`` in a call seeded ``seed``: a 63-bit hash,
    so every (prompt, sample) of every call draws its own random stream (the online loop's ``seed`` already
    differs per iteration), and the same triple gives the same stream whatever else is in the batch."""
    x = _mix64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64)
    x = _mix64((x + int(prompt_index) * 0xD1B54A32D192ED03 + 1) & _MASK64)
    x = _mix64((x + int(sample_index) * 0x8CB92BA72F3D8DD7 + 1) & _MASK64)
    return x >> 1


def check_sampling_args(max_new_tokens, temperature, top_p) -> None:
    """A sampler's settings, checked the same way by every backend."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def check_sample_args(prompts: Sequence[str], k: int) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}")
    bad = [i for i, p in enumerate(prompts) if not (isinstance(p, str) or isinstance(p, list))]
    if bad:
        raise TypeError(f"prompts[{bad[0]}] must be a str or a list of chat messages, got {type(prompts[bad[0]]).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (samples per prompt) must be a positive int, got {k!r}")


class Sampler:
    """Protocol: ``sample(prompts, k, seed=...)`` → ``[len(prompts)][k]`` decoded response strings.

    A prompt is a string or a conversation (list of messages); it is encoded with
    :func:`inpo.data.chat.encode_prompt` (then cut to ``max_prompt_length`` when the sampler has one) and sampling
    stops on :func:`inpo.data.chat.stop_token_ids` (eos and the chat template's end-of-turn token).

    A sampler lives as long as the run: ``set_policy(model)`` points it at a model's *current* weights (the HF
    sampler keeps a reference; vLLM loads the weights into its running engine), ``close()`` frees what it holds
    (vLLM: the engine and its worker processes). It is also a context manager that closes on exit.
    """

    model = None

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        raise NotImplementedError

    def set_policy(self, model) -> None:
        """Sample from ``model``'s current weights from now on."""
        self.model = model

    def close(self) -> None:
        """Release the sampler's resources; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
