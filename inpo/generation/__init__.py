"""One sampler interface for the online loop: HF ``generate`` everywhere, vLLM when installed."""

from __future__ import annotations

import os

from inpo import _optional
from inpo.generation.base import BACKENDS, Sampler
from inpo.generation.hf import HFSampler
from inpo.generation.vllm import VLLMSampler  # importable without vllm; constructing it says what is missing
from inpo.models import resolve_model

__all__ = ["Sampler", "HFSampler", "VLLMSampler", "make_sampler", "auto_backend", "BACKENDS"]


# vLLM's CPU engine start (80 s at load 7, 35-85 s quiet) against its steady-state gain over HF generate (442 vs
# 114 tok/s, 3.9x, cpu-22m fp32): it pays back after about 12k sampled tokens (bench/results/generation-cpu.jsonl).
VLLM_CPU_BREAK_EVEN_TOKENS = 15_000


def auto_backend(model=None, planned_tokens: int | None = None) -> str:
    """What ``sampler: auto`` picks: the faster sampler, as measured (README, "Generation").

    vLLM when it is importable and either CUDA is up or the run will sample at least
    :data:`VLLM_CPU_BREAK_EVEN_TOKENS` new tokens (``planned_tokens``; unknown counts as few): on CPU its engine
    start is only repaid by its ~3.9x faster steady-state sampling on a long run. Otherwise HF, which has no engine
    to start.
    """
    if not _optional.available("vllm"):
        return "hf"
    import torch

    if torch.cuda.is_available():
        return "vllm"
    return "vllm" if (planned_tokens or 0) >= VLLM_CPU_BREAK_EVEN_TOKENS else "hf"


def make_sampler(backend: str, model, tokenizer, *, dtype=None, planned_tokens: int | None = None, **kw) -> Sampler:
    """``"hf"`` → :class:`HFSampler`; ``"vllm"`` → :class:`VLLMSampler` (needs vllm); ``"auto"`` →
    :func:`auto_backend`. ``model`` is a transformers model or a local model directory (the HF backend loads
    it with ``AutoModelForCausalLM``, local files only). ``dtype`` is the vLLM engine's (``None`` = the
    policy's); the HF sampler runs the model object as it is.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = auto_backend(model, planned_tokens)
    if backend == "vllm":
        return VLLMSampler(resolve_model(model), tokenizer, dtype=dtype, **kw)
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        model = resolve_model(model)  # a real-model name (smollm2) or a folder
        if not os.path.isdir(model):
            raise FileNotFoundError(f"model directory not found: {str(model)!r}")
        model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
    if tokenizer is None:
        raise ValueError("the hf sampler needs a tokenizer")
    return HFSampler(model, tokenizer, **kw)
