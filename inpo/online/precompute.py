"""Phase 3 of an iteration: the training records as token sequences, and their log-probs under π_ref, π_t (and
ONPO's π'_t) with the fused head under no_grad (``iter_<t>/logps.safetensors``)."""

from __future__ import annotations

import time

from inpo.data.chat import encode_prompt, encode_responses, prompt_key, prompt_text, record_origin
from inpo.online.cache import TENSORS, cached_phase
from inpo.online.run import OnlineRun
from inpo.train.config import TrainConfig
from inpo.train.loop import precompute_logps


def training_sequences(tokenizer, data: list[dict], pairwise: bool, cfg: TrainConfig, run=None):
    """``(seqs, kept)``: (prompt_ids, response_ids) per sequence through the chat template on the whole
    conversation (:func:`inpo.data.chat.encode_completion`), truncated with TRL's semantics; ``kept`` are the
    records left (a pair, or SPPO's sample, is dropped as a whole when truncation leaves nothing to score).
    A pair that still exceeds the packing budget is a ValueError naming it, before any work is done."""
    trunc = cfg.truncation()
    prompt_ids: dict = {}
    seqs, kept = [], []
    fields = ("chosen", "rejected") if pairwise else ("response",)
    for r in data:
        key, where = prompt_key(r["prompt"]), record_origin(r)  # where: file:line of an offline pair
        if key not in prompt_ids:  # the whole conversation is rendered, then cut: ids before truncation
            prompt_ids[key] = encode_prompt(tokenizer, r["prompt"], where=where)
        p, ys = encode_responses(tokenizer, r["prompt"], [r[f] for f in fields], prompt_ids=prompt_ids[key],
                                 where=where)  # a pair shares TRL's prompt/response split
        parts = [trunc.apply(p, y) if trunc.active else (p, y) for y in ys]
        if any(part is None for part in parts):
            continue
        size = sum(len(p) + len(y) for p, y in parts)
        if size > cfg.max_tokens:
            raise ValueError(f"{'the pair' if pairwise else 'the sequence'} for prompt {prompt_text(r['prompt'])[:60]!r} "
                             f"has {size} tokens, more than max_tokens={cfg.max_tokens} (the packed micro-batch "
                             f"budget); raise max_tokens or set max_length (TRL's truncation; now {cfg.max_length})")
        seqs += parts
        kept.append(r)
    if len(kept) < len(data) and run is not None:
        run.print(dropped_line(len(data) - len(kept), len(data), pairwise, cfg))
    return seqs, kept


def dropped_line(dropped: int, total: int, pairwise: bool, cfg: TrainConfig) -> str:
    return (f"[inpo] dropped {dropped} of {total} {'pairs' if pairwise else 'sequences'} whose prompt alone fills "
            f"max_length={cfg.max_length} (truncation_mode=keep_start, as TRL)")


def precomputed_logps(ctx: OnlineRun, t: int, seqs, model_t, times: dict) -> dict:
    """Every sequence's log-prob under each source the run reads (``ctx.source.logp_sources``): ``ref`` = π_ref,
    ``iterate`` = π_t (``model_t``; π_0 = π_ref, so iteration 0 takes the reference's), ``aux`` = π'_t. Collective
    under torchrun (every rank scores every sequence; sharded models gather their weights)."""
    cfg, models = ctx.cfg, ctx.models
    need = ctx.source.logp_sources(ctx.objective)

    def logps_of(model):
        return precompute_logps(model, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl,
                                pairwise=ctx.objective.pairwise)

    def precompute() -> dict:
        t0 = time.perf_counter()
        logps = {}
        if "ref" in need or (t == 0 and "iterate" in need):
            logps["ref"] = logps_of(models.ref)
        if "iterate" in need:
            logps["iterate"] = logps["ref"].clone() if t == 0 else logps_of(model_t)
        if "aux" in need:
            logps["aux"] = logps_of(models.aux)
        times["precompute_s"] = time.perf_counter() - t0
        return logps

    return cached_phase(ctx.iter_dir(t) / "logps.safetensors", TENSORS, precompute, ctx.shard)
