"""One sampler interface for the online loop: HF ``generate`` everywhere, vLLM when installed."""

from __future__ import annotations

import os

from inpo.generation.base import BACKENDS, Sampler
from inpo.generation.hf import HFSampler

__all__ = ["Sampler", "HFSampler", "VLLMSampler", "make_sampler", "auto_backend", "BACKENDS"]


def __getattr__(name):  # VLLMSampler is importable without vllm; constructing it says what is missing
    if name == "VLLMSampler":
        from inpo.generation.vllm import VLLMSampler

        return VLLMSampler
    raise AttributeError(name)


def auto_backend(model=None) -> str:
    """What ``sampler: auto`` picks for ``model``: the faster sampler where that was measured.

    The rule, in one place for the generation bench to update with its measurement: vLLM when it is importable
    and CUDA is up; otherwise HF, which has no engine to start (the CPU build of vLLM took 139-250 s to start on
    this project's 2-core machine, bench/results/vllm/sampler-cpu.jsonl and the test tier).
    """
    from inpo._optional import available

    if not available("vllm"):
        return "hf"
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def make_sampler(backend: str, model, tokenizer, *, dtype=None, **kw) -> Sampler:
    """``"hf"`` → :class:`HFSampler`; ``"vllm"`` → :class:`VLLMSampler` (needs vllm); ``"auto"`` →
    :func:`auto_backend`. ``model`` is a transformers model or a local model directory (the HF backend loads
    it with ``AutoModelForCausalLM``, local files only). ``dtype`` is the vLLM engine's (``None`` = the
    policy's); the HF sampler runs the model object as it is.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = auto_backend(model)
    if backend == "vllm":
        from inpo.generation.vllm import VLLMSampler

        return VLLMSampler(model, tokenizer, dtype=dtype, **kw)
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        if not os.path.isdir(model):
            raise FileNotFoundError(f"model directory not found: {str(model)!r}")
        model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
    if tokenizer is None:
        raise ValueError("the hf sampler needs a tokenizer")
    return HFSampler(model, tokenizer, **kw)
