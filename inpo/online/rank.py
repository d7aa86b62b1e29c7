"""Phase 2 of an iteration: the oracle ranks π_t's samples (``iter_<t>/data.jsonl``: a chosen/rejected pair per
prompt, ties dropped; SPPO: each response with its estimated win-rate as target) and ``iter_<t>/rank_stats.json``
(oracle queries, pairs, ties dropped)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from inpo.online.cache import Codec, cached_phase, read_jsonl, write_jsonl
from inpo.online.generate import sample_responses
from inpo.online.run import OnlineRun
from inpo.online.shard import Shard
from inpo.oracles import estimate_win_rates, select_pairs
from inpo.utils.io import atomic_write_text

STATS_FILE = "rank_stats.json"


def _load_ranked(path: Path) -> tuple[list[dict], dict]:
    return read_jsonl(path), json.loads((path.parent / STATS_FILE).read_text())


def _save_ranked(path: Path, value: tuple[list[dict], dict]) -> None:
    data, stats = value
    atomic_write_text(path.parent / STATS_FILE, json.dumps(stats))
    write_jsonl(path, data)  # last: its presence says the phase is complete


RANKED = Codec(_load_ranked, _save_ranked)


def rank_stats(ctx: OnlineRun, t: int) -> dict:
    """Iteration ``t``'s ranking stats, read back (a resumed iteration reports its queries too)."""
    return json.loads((ctx.iter_dir(t) / STATS_FILE).read_text())


def rank_responses(objective, cfg, prompts, responses, oracle, *, seed: int) -> tuple[list[dict], dict]:
    """Pairs (or SPPO's scored samples) for ``prompts`` from the oracle, in prompt order, and their stats."""
    if objective.samples == "scored":  # K scored responses per prompt (SPPO) instead of pairs
        q0 = oracle.queries
        rates = estimate_win_rates(prompts, responses, oracle)
        data = [{"prompt": p, "response": y, "target": float(w)}
                for p, ys, ws in zip(prompts, responses, rates) for y, w in zip(ys, ws)]
        stats = {"queries": oracle.queries - q0, "pairs": 0, "sequences": len(data), "ties_dropped": 0}
    else:
        pairs, stats = select_pairs(prompts, responses, oracle, strategy=cfg.pair_strategy, seed=seed)
        data = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    return data, stats


def ranked_data(ctx: OnlineRun, t: int, model, oracle, times: dict) -> tuple[list[dict], dict]:
    """Iteration ``t``'s training records and ranking stats, on every rank: each rank ranks its block of the
    samples (of ``model`` = π_t) with its own seed; the blocks are gathered in prompt order."""
    cfg, shard = ctx.cfg, ctx.shard

    def rank() -> tuple[list[dict], dict]:
        mine = shard.block(sample_responses(ctx, t, model, times))
        t0 = time.perf_counter()
        if mine:
            data, stats = rank_responses(ctx.objective, cfg, [s["prompt"] for s in mine],
                                         [s["responses"] for s in mine], oracle, seed=shard.seed(cfg.seed * 31 + t))
        else:
            data, stats = [], {"queries": 0, "pairs": 0, "ties_dropped": 0}
        times["rank_s"] = time.perf_counter() - t0
        return _gathered(shard, shard.gather({"data": data, "stats": stats}))

    return cached_phase(ctx.iter_dir(t) / "data.jsonl", RANKED, rank, shard)


def _gathered(shard: Shard, parts: list[dict]) -> tuple[list[dict], dict]:
    """The ranks' records in rank (= prompt) order and their summed stats; under torchrun the stats also record the
    world size and how many units (pairs; SPPO: sequences) each rank selected."""
    data = [r for part in parts for r in part["data"]]
    stats = dict(parts[0]["stats"])
    for part in parts[1:]:
        for k, v in part["stats"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in stats:
                stats[k] += v
            else:
                stats.setdefault(k, v)
    if shard.world > 1:
        stats["world_size"] = shard.world
        stats["rank_units"] = [len(part["data"]) for part in parts]
    return data, stats
