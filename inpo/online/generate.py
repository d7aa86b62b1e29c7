"""Phase 1 of an iteration: K responses per prompt from π_t (``iter_<t>/samples.jsonl``), with the run's one
sampler."""

from __future__ import annotations

import time

from inpo.data.chat import encode_prompt, prompt_text
from inpo.generation import SamplingPlan, make_sampler
from inpo.generation.limits import check_prompt_lengths, context_length
from inpo.online.cache import JSONL, cached_phase
from inpo.online.prompts import encode_checked, prompt_pools, prompt_set
from inpo.online.run import OnlineRun
from inpo.train.config import TrainConfig


def sampling_plan(cfg: TrainConfig, tokenizer, model) -> SamplingPlan:
    """What the run samples (:class:`~inpo.generation.SamplingPlan`: ``sampler: auto`` weighs it, the vLLM engine is
    sized by it), after checking -- before any engine starts -- that every training and held-out prompt, cut to
    max_prompt_length, plus max_new_tokens fits the model's context (one rule for both samplers)."""
    train, held_out = prompt_pools(cfg, tokenizer)
    held_out = held_out[:cfg.n_eval] if cfg.evaluate else []  # the ones evaluated (prompts.eval_prompts)
    trunc, context = cfg.truncation(), context_length(model.config)
    lengths = {}
    for what, pool in (("training prompt", train), ("held-out prompt", held_out)):
        lengths[what] = [len(trunc.prompt(encode_prompt(tokenizer, p))) for p in pool]
        check_prompt_lengths(lengths[what], cfg.max_new_tokens, context, max_prompt_length=cfg.max_prompt_length,
                             name=lambda i, what=what, pool=pool: f"{what} {i} ({prompt_text(pool[i])[:40]!r})")
    n = min(cfg.n_prompts or len(train), len(train))
    mean = sum(lengths["training prompt"]) / max(len(train), 1)
    calls = [(n * cfg.k, round(mean * n * cfg.k))] * cfg.iterations  # each iteration's generation
    if held_out:  # π_ref once, then each π_{t+1}
        calls += [(len(held_out) * cfg.eval_k, sum(lengths["held-out prompt"]) * cfg.eval_k)] * (cfg.iterations + 1)
    longest = max(lengths["training prompt"] + lengths["held-out prompt"], default=0)
    return SamplingPlan(tuple(calls), cfg.max_new_tokens, longest, weight_updates=len(calls) - 1)


class RunSampler:
    """The run's one sampler, built on first use; ``sampler(model)`` points it at ``model``'s current weights
    (π_t, π_{t+1}, π_ref) and returns it. With vLLM that is one engine for the whole run whose weights are reloaded
    in place; ``close()`` (the ``with`` block's end) shuts it down. ``plan``: what the run samples; ``say``: where
    the sampler's choice is announced."""

    def __init__(self, cfg: TrainConfig, tokenizer, plan: SamplingPlan | None = None, say=print):
        self.cfg, self.tokenizer, self.sampler, self.plan, self.say = cfg, tokenizer, None, plan, say

    def __call__(self, model):
        cfg = self.cfg
        if self.sampler is None:
            self.sampler = make_sampler(cfg.sampler, model, self.tokenizer, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                                        dtype=cfg.sampler_dtype, max_prompt_length=cfg.max_prompt_length,
                                        plan=self.plan, vllm_options=cfg.vllm_options(), say=self.say)
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
