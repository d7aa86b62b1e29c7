"""The start of a run: claim the output directory and, with ``--resume``, load the newest checkpoint that verifies
and check that it belongs to this config and data (the fingerprint stored in every checkpoint's state)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from inpo.online.shard import Shard
from inpo.train.checkpoint import load_latest_good_checkpoint
from inpo.train.config import TrainConfig, config_to_yaml
from inpo.train.loop import RunContext
from inpo.train.resume import check_resume, run_fingerprint
from inpo.train.rundir import claim_run_dir, write_run_file


def begin_run(cfg: TrainConfig, device, shard: Shard) -> tuple[RunContext, dict | None]:
    """Claim the output directory (rank 0: lock, clear what a previous run recorded on a fresh start, marker) and,
    with --resume, load the newest checkpoint that verifies and check that it belongs to this config and data.
    Called after every input has been validated (model, tokenizer, data, prompts, oracle): nothing is deleted
    before the run is known to be able to start."""
    if not cfg.output:
        raise ValueError("output is required: pass --output DIR (where metrics, checkpoints and the final model go)")
    out = Path(cfg.output)
    run = RunContext(cfg=cfg, out=out, device=device)
    run.fingerprint = run_fingerprint(cfg)

    def claim():
        cleared = claim_run_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
        if cleared:
            run.print(f"[inpo] starting fresh in {out} (removed what the previous run wrote: {', '.join(cleared)})")

    shard.on_main(claim)
    ckpt = _resume_checkpoint(run, shard) if cfg.resume else None
    if run.is_main:
        write_run_file(out, "config.yaml", config_to_yaml(cfg))
    if shard.world > 1:
        dist.barrier()  # rank 0 has cleared / created the output directory before anyone reads or writes it
    return run, ckpt


def _resume_checkpoint(run: RunContext, shard: Shard) -> dict:
    cfg, out = run.cfg, run.out
    ckpt = load_latest_good_checkpoint(out, warn=run.print)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'} (nothing to resume; "
                                f"run without --resume to start fresh)")
    path, st = ckpt["path"], ckpt["state"]
    check_resume(ckpt, cfg, out, run.fingerprint, warn=run.print, is_main=run.is_main)
    run.global_step = int(st["global_step"])
    keep_iters = st["iteration"] + (1 if st["phase"] == "done" else 0)
    run.truncate_metrics(run.global_step, keep_iters)
    run.print(f"[inpo] resuming from {path.name}: iteration {st['iteration']} phase {st['phase']} "
              f"step {st.get('iter_step', 0)} (global {run.global_step})")
    if ckpt["world_size"] != shard.world:
        raise ValueError(f"--resume: {path.name} was written by a run of {ckpt['world_size']} process(es), this run "
                         f"has {shard.world}; resume with the same number of processes (it decides each "
                         f"rank's share of the prompts and of every step)")
    return ckpt
