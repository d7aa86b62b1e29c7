"""Phase 1 of an iteration: K responses per prompt from π_t (``iter_<t>/samples.jsonl``), with the run's one
sampler."""

from __future__ import annotations

import time

from inpo.generation import make_sampler
from inpo.online.cache import JSONL, cached_phase
from inpo.online.prompts import encode_checked, planned_new_tokens, prompt_set
from inpo.online.run import OnlineRun
from inpo.train.config import TrainConfig


class RunSampler:
    """The run's one sampler, built on first use; ``sampler(model)`` points it at ``model``'s current weights
    (π_t, π_{t+1}, π_ref) and returns it. With vLLM that is one engine for the whole run whose weights are reloaded
    in place; ``close()`` (the ``with`` block's end) shuts it down."""

    def __init__(self, cfg: TrainConfig, tokenizer):
        self.cfg, self.tokenizer, self.sampler = cfg, tokenizer, None

    def __call__(self, model):
        cfg = self.cfg
        if self.sampler is None:
            self.sampler = make_sampler(cfg.sampler, model, self.tokenizer, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                                        dtype=cfg.sampler_dtype, max_prompt_length=cfg.max_prompt_length,
                                        planned_tokens=planned_new_tokens(cfg))
        else:
            self.sampler.set_policy(model)
        return self.sampler

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def sample_responses(ctx: OnlineRun, t: int, model, times: dict) -> list[dict]:
    """``[{"prompt", "responses"}]`` for iteration ``t``'s prompts, in prompt order, on every rank: each rank samples
    its block of the prompts with ``model`` (π_t) and its own seed; the blocks are gathered in prompt order."""
    cfg, shard = ctx.cfg, ctx.shard

    def sample() -> list[dict]:
        prompts = prompt_set(cfg, t)
        encode_checked(ctx.tokenizer, prompts, cfg)
        mine = shard.block(prompts)
        t0 = time.perf_counter()
        responses = ctx.sampler(model).sample(mine, cfg.k, seed=shard.seed(cfg.seed * 7919 + t)) if mine else []
        times["generate_s"] = time.perf_counter() - t0
        return [{"prompt": p, "responses": r} for part in shard.gather(list(zip(mine, responses))) for p, r in part]

    return cached_phase(ctx.iter_dir(t) / "samples.jsonl", JSONL, sample, ctx.shard)
