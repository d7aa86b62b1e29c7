"""Sampling with vLLM (GPU), used only when ``vllm`` is installed (imported through ``inpo._optional``).

vLLM loads weights from a directory: given an in-memory model (the online loop passes π_t), the sampler
exports its current weights (``save_pretrained``) to a temporary directory and builds the engine from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import torch

from inpo.generation.base import Sampler, check_sample_args

__all__ = ["VLLMSampler"]


class VLLMSampler(Sampler):
    """vLLM sampler over a local model directory; same contract as :class:`~inpo.generation.hf.HFSampler`."""

    def __init__(self, model, tokenizer=None, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int | None = None, gpu_memory_utilization: float = 0.4,
                 dtype: str = "auto", **llm_kwargs):
        from inpo._optional import require

        self._vllm = require("vllm")  # ImportError saying what to install
        self._export_dir = None
        if isinstance(model, (str, os.PathLike)):
            path = model
        elif isinstance(model, torch.nn.Module):
            # An in-memory policy: export its *current* weights. Its config's ``_name_or_path`` names the
            # directory it was first loaded from (π_ref), so loading that would silently sample π_ref every
            # iteration instead of π_t.
            if tokenizer is None:
                raise ValueError("VLLMSampler needs the tokenizer to export an in-memory model for vLLM")
            from inpo.train.model import export_policy

            self._export_dir = tempfile.TemporaryDirectory(prefix="inpo-vllm-")
            path = str(export_policy(model, tokenizer, self._export_dir.name))
        else:
            path = None
        if not path or not os.path.isdir(path):
            raise ValueError("VLLMSampler needs a local model directory (vLLM loads weights from disk) or a "
                             f"transformers model to export, got {model!r:.80}")
        if tokenizer is None:
            from inpo.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path)
        self.tokenizer = tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, float(temperature), float(top_p)
        self.llm = self._vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, seed=0,
                                  gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        from inpo.data.chat import encode_prompt, stop_token_ids

        check_sample_args(prompts, k)
        params = self._vllm.SamplingParams(n=k, seed=seed, max_tokens=self.max_new_tokens,
                                           temperature=self.temperature, top_p=self.top_p, top_k=-1,
                                           stop_token_ids=stop_token_ids(self.tokenizer), skip_special_tokens=True)
        inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[c.text for c in out.outputs] for out in outputs]
