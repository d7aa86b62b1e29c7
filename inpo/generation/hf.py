"""Sampling K responses per prompt with Hugging Face ``generate`` (KV cache, left padding, batched)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from inpo.data.chat import Truncation, encode_prompt, prompt_text, stop_token_ids
from inpo.generation.base import Sampler, check_sample_args, check_sampling_args
from inpo.generation.limits import check_prompt_lengths, context_length
from inpo.ops.attention import sdpa_for_generation

__all__ = ["HFSampler"]


def _flash_autocast(model, device):
    """bf16 autocast for a flash-attention model with fp32 weights on CUDA, else a no-op context.

    flash-attn only takes fp16/bf16; transformers casts fp32 queries to the autocast dtype when autocast is on
    and otherwise to the Linear weights' dtype -- fp32 for our fp32 master weights, which flash-attn rejects
    ("FlashAttention only support fp16 and bf16 data type"). The trainer's body runs under bf16 autocast anyway.
    """
    import contextlib

    import torch

    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "")
    p = next(model.parameters(), None)
    if device.type == "cuda" and "flash" in attn and p is not None and p.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class HFSampler(Sampler):
    """Batched ``model.generate`` sampler.

    Rows (prompt × sample) are generated ``batch_size`` at a time, left-padded, with the KV cache on.
    ``temperature=0`` means greedy decoding. Sampling is reproducible: ``sample(..., seed=s)`` seeds torch's global
    RNG inside ``torch.random.fork_rng``, so the caller's RNG state is untouched and the same
    ``(prompts, k, seed, batch_size)`` gives the same responses. Responses are the decoded new tokens up to the first
    stop token -- eos or the chat template's end of turn (``<|im_end|>``, ``<|eot_id|>``),
    :func:`inpo.data.chat.stop_token_ids` -- with special tokens skipped. A prompt (after ``max_prompt_length``)
    plus ``max_new_tokens`` must fit the model's context (:func:`inpo.generation.limits.context_length`, the rule
    the vLLM sampler applies too), else ValueError. The model is put in eval mode for the call and its previous
    mode restored. ``last_stats`` holds the last call's token counts and timing.
    """

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int = 64, max_prompt_length: int | None = None):
        check_sampling_args(max_new_tokens, temperature, top_p)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.stop_ids = stop_token_ids(tokenizer)  # eos + the template's end of turn; raises when there is none
        self.truncation = Truncation(max_prompt_length=max_prompt_length)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, float(temperature), float(top_p)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.context = context_length(model.config)  # prompt + max_new_tokens must fit (as for vLLM)
        self.last_stats: dict = {}
        self.last_lengths: list[int] = []  # new tokens of each response of the last call (stop token excluded)

    def _generation_config(self):
        from transformers import GenerationConfig

        sample = self.temperature > 0
        kw = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0) if sample else \
            dict(do_sample=False)
        # A fresh config: a checkpoint's own generation_config (top_k=50, repetition penalties...) would
        # otherwise silently change the distribution we sample π_t from.
        return GenerationConfig(max_new_tokens=self.max_new_tokens, eos_token_id=list(self.stop_ids),
                                pad_token_id=self.pad_id, use_cache=True, **kw)

    def _encode(self, prompts: Sequence) -> list[list[int]]:
        """Prompt ids as generation starts from them (TRL's max_prompt_length keeps the end), checked to fit."""
        encoded = [self.truncation.prompt(encode_prompt(self.tokenizer, p)) for p in prompts]
        check_prompt_lengths([len(x) for x in encoded], self.max_new_tokens, self.context,
                             name=lambda i: f"prompt {i} ({prompt_text(prompts[i])[:40]!r})",
                             max_prompt_length=self.truncation.max_prompt_length)
        return encoded

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        import torch

        check_sample_args(prompts, k)
        encoded = self._encode(prompts)
        rows = [ids for ids in encoded for _ in range(k)]
        device = next(self.model.parameters()).device
        stops = set(self.stop_ids)
        gen_config = self._generation_config()
        texts: list[str] = []
        lengths: list[int] = []
        new_tokens = finished = 0
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        fork_devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=fork_devices), torch.inference_mode(), _flash_autocast(self.model,
                                                                                                   device), \
                    sdpa_for_generation(self.model):  # padding + KV-cache masks: inpo_varlen is for packed rows
                torch.manual_seed(seed)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start:start + self.batch_size]
                    width = max(len(r) for r in chunk)
                    input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in chunk], device=device)
                    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)
                    out = self.model.generate(input_ids=input_ids, attention_mask=mask,
                                              generation_config=gen_config)
                    for row in out[:, width:].tolist():
                        end = next((j for j, t in enumerate(row) if t in stops), None)
                        if end is not None:  # the first eos / end-of-turn token ends the response
                            row = row[:end]
                            finished += 1
                        new_tokens += len(row)
                        lengths.append(len(row))
                        texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        self.last_lengths = lengths
        self.last_stats = {"responses": len(texts), "new_tokens": new_tokens, "finished": finished,
                           "seconds": seconds, "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0}
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
