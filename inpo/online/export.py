"""The run's model folders: π_{t+1} after each iteration (``iter_<t>/policy``) and the final policy (``final/``),
each with the record of the run's starting model that ``inpo eval`` reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from inpo.eval import ORIGIN_FILE, origin_record
from inpo.online.run import OnlineRun
from inpo.train.loop import RunContext, export_final
from inpo.utils.io import atomic_write_text

ITERATE_META = "inpo_export.json"  # written by export_final into every iterate folder: marks it as ours


def export_model(run: RunContext, policy, tokenizer, **kw) -> Path:
    """export_final (``kw``: dest, meta) plus the record of the run's starting model that `inpo eval` reads."""
    final = export_final(run, policy, tokenizer, **kw)
    if run.is_main:
        atomic_write_text(final / ORIGIN_FILE, json.dumps(origin_record(run.cfg), indent=2) + "\n")
    return final


def iterate_dir(out: Path, t: int) -> Path:
    return out / f"iter_{t:03d}" / "policy"


def keep_iterate(ctx: OnlineRun, t: int, *, if_missing: bool = False) -> None:
    """π_{t+1} -- the policy iteration t trained, the one its win-rate row measures -- as a transformers model
    folder ``<out>/iter_<t>/policy`` (collective under FSDP); ``if_missing``: only when rank 0 has no complete one.
    With ``keep_iterates: N`` only the newest N such folders are kept; a folder is removed only when its
    ``inpo_export.json`` says it is an iterate of ours."""
    run, cfg = ctx.run, ctx.cfg
    if if_missing and ctx.shard.main_sees(iterate_dir(run.out, t) / ITERATE_META):
        return
    export_model(run, ctx.models.policy, ctx.tokenizer, dest=iterate_dir(run.out, t),
                 meta={"kind": "iterate", "iteration": t, "iterate": t + 1, "objective": cfg.objective,
                       "global_step": run.global_step, "start_model": cfg.model or "default"})
    if run.is_main and cfg.keep_iterates is not None:
        prune_iterates(run.out, cfg.keep_iterates)


def prune_iterates(out: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` iterate folders ``<out>/iter_*/policy`` that are ours (their
    ``inpo_export.json`` says kind "iterate"); anything else is left alone. Returns the removed folders."""
    ours = []
    for d in Path(out).glob("iter_*/policy"):
        try:
            meta = json.loads((d / ITERATE_META).read_text())
        except (OSError, ValueError):
            continue  # not written by us (or not completely): never deleted
        if isinstance(meta, dict) and meta.get("kind") == "iterate" and isinstance(meta.get("iteration"), int):
            ours.append((meta["iteration"], d))
    removed = [d for _, d in sorted(ours)[:-keep]] if keep > 0 else []
    for d in removed:
        shutil.rmtree(d)
    return removed
