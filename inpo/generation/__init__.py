"""One sampler interface for the online loop: HF ``generate`` everywhere, vLLM when installed."""

from __future__ import annotations

import os
import sys

from inpo import _optional
from inpo.generation.base import BACKENDS, Sampler
from inpo.generation.cost import choose_backend, model_shape
from inpo.generation.hf import HFSampler
from inpo.generation.limits import SamplingPlan
# VLLMSampler is importable without vllm; constructing it says what is missing
from inpo.generation.vllm import UnsupportedArchitecture, VLLMSampler
from inpo.models import resolve_model

__all__ = ["Sampler", "HFSampler", "VLLMSampler", "make_sampler", "auto_backend", "BACKENDS", "SamplingPlan"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def auto_backend(model=None, plan: SamplingPlan | None = None, *, batch_size: int = 128) -> tuple[str, str]:
    """What ``sampler: auto`` picks, and why (one line): HF when vLLM is not importable; else the sampler the cost
    model (:mod:`inpo.generation.cost`, constants measured by ``python -m bench.sampler_cost``) predicts faster for
    this model (an in-memory transformers model) and this run's ``plan``, engine start included."""
    if not _optional.available("vllm"):
        return "hf", "vLLM is not installed"
    import torch

    if not isinstance(model, torch.nn.Module):
        return ("vllm", "a model directory: no shape to weigh; vLLM") if torch.cuda.is_available() else \
            ("hf", "a model directory: no shape to weigh; HF")
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_backend(model_shape(model), plan, device_kind=kind, hf_batch_rows=batch_size)


def make_sampler(backend: str, model, tokenizer, *, dtype=None, plan: SamplingPlan | None = None, say=_say,
                 vllm_options: dict | None = None, **kw) -> Sampler:
    """``"hf"`` → :class:`HFSampler`; ``"vllm"`` → :class:`VLLMSampler` (needs vllm); ``"auto"`` →
    :func:`auto_backend`, announced in one line through ``say``; when vLLM then cannot load the architecture, auto
    falls back to HF with one more line (``--sampler vllm`` raises instead). ``model`` is a transformers model or a
    local model directory (the HF backend loads it with ``AutoModelForCausalLM``, local files only). ``dtype`` is
    the vLLM engine's (``None`` = the policy's); the HF sampler runs the model object as it is. ``plan`` (what the run
    will sample) feeds the auto rule and the vLLM engine's sizing; ``vllm_options`` go to :class:`VLLMSampler` only
    (``max_model_len``, ``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ...).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; valid: {', '.join(BACKENDS)}")
    auto = backend == "auto"
    if auto:
        backend, why = auto_backend(model, plan, batch_size=kw.get("batch_size", 128))
        say(f"[inpo] sampler auto: {backend} ({why})")
    if backend == "vllm":
        try:
            return VLLMSampler(resolve_model(model), tokenizer, dtype=dtype, plan=plan, **kw, **(vllm_options or {}))
        except UnsupportedArchitecture as exc:
            if not auto:
                raise
            say(f"[inpo] sampler auto: hf ({str(exc).split(';')[0]})")
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        model = resolve_model(model)  # a real-model name (smollm2) or a folder
        if not os.path.isdir(model):
            raise FileNotFoundError(f"model directory not found: {str(model)!r}")
        model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
    if tokenizer is None:
        raise ValueError("the hf sampler needs a tokenizer")
    return HFSampler(model, tokenizer, **kw)
