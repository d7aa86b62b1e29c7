"""Phase 6 of an iteration: π_{t+1} against π_ref -- the win-rate on held-out prompts with a bootstrap CI (and,
where the oracle allows, exploitability) online; TRL's eval metrics on held-out pairs offline (``eval_data``)."""

from __future__ import annotations

import torch

from inpo.eval import win_rate
from inpo.exploitability import exploitability
from inpo.online.cache import JSONL, cached_phase, write_jsonl
from inpo.online.prompts import eval_prompts
from inpo.online.run import OnlineRun
from inpo.online.shard import Shard
from inpo.train.loop import precompute_logps
from inpo.train.reporting import pair_metric_sums, trl_metrics


def win_rate_record(ctx: OnlineRun, t: int, oracle) -> dict:
    """Rank 0 evaluates π_{t+1} (under torchrun: the twin, loaded with the policy's full weights) and every rank
    gets the result."""
    policy = ctx.models.current()
    return ctx.shard.on_main(lambda: _win_rate(ctx, t, policy, oracle))


def _win_rate(ctx: OnlineRun, t: int, policy, oracle) -> dict:
    cfg, sampler = ctx.cfg, ctx.sampler
    prompts = eval_prompts(cfg)

    def sample_ref() -> list[dict]:  # π_ref never changes: sampled once per run, with the policy's seed
        base = sampler(ctx.models.ref).sample(prompts, cfg.eval_k, seed=cfg.eval_seed)
        return [{"prompt": p, "responses": y} for p, y in zip(prompts, base)]

    # Shard(): rank 0 alone runs this function, so nothing here is collective.
    base = [r["responses"] for r in cached_phase(ctx.run.own("eval_ref_responses.jsonl"), JSONL, sample_ref,
                                                 Shard())]
    pol = sampler(policy).sample(prompts, cfg.eval_k, seed=cfg.eval_seed)
    write_jsonl(ctx.iter_dir(t) / "eval_responses.jsonl", [{"prompt": p, "responses": y} for p, y in zip(prompts, pol)])
    wr = win_rate(prompts, pol, base, oracle, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    return {"win_rate": wr.win_rate, "win_rate_ci_low": wr.ci_low, "win_rate_ci_high": wr.ci_high,
            "eval_n": wr.n, "eval_queries": wr.queries, **_exploitability_record(cfg, oracle, prompts, pol)}


def _exploitability_record(cfg, oracle, prompts, responses) -> dict:
    """Exploitability of π_{t+1} from its eval samples, where the oracle's best response is computable from
    features (the synthetic oracle; no oracle queries). Other oracles: ``inpo eval --exploitability`` (pool)."""
    if not hasattr(oracle, "feature_matrix"):
        return {}
    out = {}
    for kind, key in (("feature", "exploitability"), ("style", "style_exploitability")):
        e = exploitability(oracle, prompts, responses, kind=kind, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        out.update({key: e.value, f"{key}_ci_low": e.ci_low, f"{key}_ci_high": e.ci_high})
    return out


def heldout_pair_metrics(ctx: OnlineRun, seqs, held: list[dict]) -> dict:
    """TRL's eval metrics on the held-out pairs ``eval_data`` (TRL's eval_dataset): ``eval_loss`` (the objective's
    mean loss) and ``eval_rewards/*``, ``eval_logps/*`` for the trained policy against π_ref (π_t = π_ref offline).
    Collective under FSDP (every rank scores every held-out sequence)."""
    cfg, objective = ctx.cfg, ctx.objective
    ref_l = precompute_logps(ctx.models.ref, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
    pol_l = precompute_logps(ctx.models.policy, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
    side = objective.side_inputs({"ref": ref_l, "iterate": ref_l}, held)
    lengths = torch.tensor([float(len(y)) for _, y in seqs]) if objective.needs_lengths else None
    loss = objective(pol_l, side.get("ref_logps"), side.get("anchor_logps"), lengths=lengths)
    trl = trl_metrics(pair_metric_sums(objective, pol_l, side).tolist(), len(held))
    return {"eval_loss": float(loss), "eval_pairs": len(held), **{f"eval_{k}": v for k, v in trl.items()}}
