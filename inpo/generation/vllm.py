"""Sampling with vLLM (GPU), used only when ``vllm`` is installed (imported through ``inpo._optional``).

vLLM loads weights from a directory, so the online loop exports π_t (``save_pretrained``) and builds a
new sampler from that directory each iteration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from inpo.generation.base import Sampler, check_sample_args

__all__ = ["VLLMSampler"]


class VLLMSampler(Sampler):
    """vLLM sampler over a local model directory; same contract as :class:`~inpo.generation.hf.HFSampler`."""

    def __init__(self, model, tokenizer=None, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int | None = None, gpu_memory_utilization: float = 0.4,
                 dtype: str = "auto", **llm_kwargs):
        from inpo._optional import require

        self._vllm = require("vllm")  # ImportError saying what to install
        path = model if isinstance(model, (str, os.PathLike)) else getattr(getattr(model, "config", None),
                                                                            "_name_or_path", None)
        if not path or not os.path.isdir(path):
            raise ValueError("VLLMSampler needs a local model directory (vLLM loads weights from disk); export "
                             f"the policy with save_pretrained() first, got {model!r:.80}")
        if tokenizer is None:
            from inpo.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path)
        self.tokenizer = tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, float(temperature), float(top_p)
        self.llm = self._vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, seed=0,
                                  gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        from inpo.data.tokenizer import encode_prompt

        check_sample_args(prompts, k)
        params = self._vllm.SamplingParams(n=k, seed=seed, max_tokens=self.max_new_tokens,
                                           temperature=self.temperature, top_p=self.top_p, top_k=-1,
                                           stop_token_ids=[self.tokenizer.eos_token_id], skip_special_tokens=True)
        inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[c.text for c in out.outputs] for out in outputs]
