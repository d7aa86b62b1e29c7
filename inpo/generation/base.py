"""The one sampler interface: K decoded responses per prompt, reproducible for a seed."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Sampler", "check_sample_args"]


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
    stops on :func:`inpo.data.chat.stop_token_ids` (eos and the chat template's end-of-turn token)."""

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        raise NotImplementedError
