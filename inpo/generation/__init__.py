"""One sampler interface for the online loop: HF ``generate`` everywhere, vLLM when installed."""

from __future__ import annotations

import os

from inpo.generation.base import Sampler
from inpo.generation.hf import HFSampler

__all__ = ["Sampler", "HFSampler", "VLLMSampler", "make_sampler", "BACKENDS"]

BACKENDS = ("hf", "vllm", "auto")


def __getattr__(name):  # VLLMSampler is importable without vllm; constructing it says what is missing
    if name == "VLLMSampler":
        from inpo.generation.vllm import VLLMSampler

        return VLLMSampler
    raise AttributeError(name)


def make_sampler(backend: str, model, tokenizer, **kw) -> Sampler:
    """``"hf"`` → :class:`HFSampler`; ``"vllm"`` → :class:`VLLMSampler` (needs vllm and a model directory);
    ``"auto"`` → vLLM when it is installed, CUDA is up and ``model`` is a directory, else HF.
    A directory given to the HF backend is loaded with ``AutoModelForCausalLM`` (local files only).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; valid: {', '.join(BACKENDS)}")
    is_path = isinstance(model, (str, os.PathLike))
    if backend == "auto":
        from inpo._optional import available

        use_vllm = is_path and available("vllm")
        if use_vllm:
            import torch

            use_vllm = torch.cuda.is_available()
        backend = "vllm" if use_vllm else "hf"
    if backend == "vllm":
        from inpo.generation.vllm import VLLMSampler

        return VLLMSampler(model, tokenizer, **kw)
    if is_path:
        from transformers import AutoModelForCausalLM

        if not os.path.isdir(model):
            raise FileNotFoundError(f"model directory not found: {str(model)!r}")
        model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
    if tokenizer is None:
        raise ValueError("the hf sampler needs a tokenizer")
    return HFSampler(model, tokenizer, **kw)
