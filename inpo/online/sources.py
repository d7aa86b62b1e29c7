"""Where an iteration's training records come from. Online: π_t's samples ranked by the oracle, T iterations,
evaluated by win-rate against π_ref. Offline: a JSONL file of TRL-style pairs -- the same loop with one iteration
(π_t = π_ref), evaluated on held-out pairs when ``eval_data`` names some.

A source is built before the run directory is touched: building it checks every input it reads."""

from __future__ import annotations

from inpo._optional import require
from inpo.data.pairs import load_pairs
from inpo.online.evaluate import heldout_pair_metrics, win_rate_record
from inpo.online.generate import sampling_plan
from inpo.online.precompute import dropped_line, training_sequences
from inpo.online.prompts import encode_checked, prompt_pools, prompt_set
from inpo.online.rank import rank_stats, ranked_data
from inpo.online.run import OnlineRun
from inpo.oracles import make_oracle
from inpo.train.config import TrainConfig


class OnlineSource:
    """π_t's K samples per prompt, ranked by the oracle (``iter_<t>/samples.jsonl``, ``data.jsonl``)."""

    iterates = True  # each iteration's π_{t+1} is kept as a model folder

    def __init__(self, cfg: TrainConfig, tokenizer, device, ref):
        train_pool, held_out = prompt_pools(cfg)  # a bad prompts file fails before the run dir is touched
        if not train_pool or (cfg.evaluate and not held_out):
            raise ValueError(f"prompts {cfg.prompts!r}: no {'training' if not train_pool else 'held-out'} prompts left")
        self.cfg, self.iterations = cfg, cfg.iterations
        self.oracle = make_oracle(cfg.oracle, device=str(device), seed=cfg.seed)
        self.plan = sampling_plan(cfg, tokenizer, ref)  # every prompt fits the model's context with max_new_tokens
        encode_checked(tokenizer, prompt_set(cfg, 0), cfg)  # iteration 0's prompts fit the token budget
        if cfg.sampler == "vllm":
            require("vllm")

    def banner(self, objective, device) -> str:
        cfg = self.cfg
        return f"[inpo] {objective!r}, {cfg.iterations} iterations, K={cfg.k}, oracle={cfg.oracle}, device={device}"

    def data(self, ctx: OnlineRun, t: int, model, times: dict) -> tuple[list[dict], list, dict]:
        """``(records, sequences, stats)`` of iteration ``t`` (``model``: π_t)."""
        data, stats = ranked_data(ctx, t, model, self.oracle, times)
        seqs, data = training_sequences(ctx.tokenizer, data, ctx.objective.pairwise, ctx.cfg, ctx.run)
        if not seqs:
            raise RuntimeError(f"iteration {t}: the oracle left no pairs (all ties); raise k or temperature")
        return data, seqs, stats

    def logp_sources(self, objective) -> frozenset:
        """The log-prob sources to precompute: the objective's (``Objective.sources``)."""
        return objective.sources

    def stats(self, ctx: OnlineRun, t: int) -> dict:
        return rank_stats(ctx, t)

    def fields(self, stats: dict, summary: dict | None) -> dict:
        """The iteration record's data fields (the ranking's own query count, from its stats file)."""
        return {"oracle_queries": stats.get("queries", 0), "pairs": stats.get("pairs", 0),
                "ties_dropped": stats.get("ties_dropped", 0)}

    def evaluate(self, ctx: OnlineRun, t: int) -> dict:
        return win_rate_record(ctx, t, self.oracle) if self.cfg.evaluate else {}


class PairsSource:
    """The pairs of ``data`` (TRL formats and truncation), encoded once; held-out pairs from ``eval_data``."""

    iterates = False
    iterations = 1
    plan = None  # it samples nothing

    def __init__(self, cfg: TrainConfig, tokenizer):
        records = load_pairs(cfg.data)
        self.seqs, self.records = training_sequences(tokenizer, records, True, cfg)  # bad data fails here
        self.dropped = len(records) - len(self.records)
        self.n_records = len(records)
        # so does a bad eval_data file
        self.heldout = training_sequences(tokenizer, load_pairs(cfg.eval_data), True, cfg) if cfg.eval_data else None
        if not self.seqs:
            raise ValueError(f"no pair of {cfg.data!r} is left after truncation to max_length={cfg.max_length} "
                             f"(truncation_mode=keep_start drops pairs whose prompt alone fills it)")

    def banner(self, objective, device) -> None:
        return None

    def data(self, ctx: OnlineRun, t: int, model, times: dict) -> tuple[list[dict], list, dict]:
        if self.dropped:
            ctx.run.print(dropped_line(self.dropped, self.n_records, True, ctx.cfg))
        return self.records, self.seqs, self.stats(ctx, t)

    def logp_sources(self, objective) -> frozenset:
        """The objective's sources, and π_ref's log-probs cached as both ``ref`` and ``iterate`` whatever it reads
        (π_t = π_ref offline): the offline cache file has always held both."""
        return objective.sources | {"ref", "iterate"}

    def stats(self, ctx: OnlineRun, t: int) -> dict:
        return {"pairs": len(self.records)}

    def fields(self, stats: dict, summary: dict | None) -> dict:
        out = {"pairs": stats["pairs"], "oracle_queries": 0}
        if summary:
            out["final_loss"] = summary["last"].get("loss")
        return out

    def evaluate(self, ctx: OnlineRun, t: int) -> dict:
        return heldout_pair_metrics(ctx, *self.heldout) if self.heldout is not None else {}
