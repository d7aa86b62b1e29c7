"""The start of a run: claim the output directory and, with ``--resume``, load the newest checkpoint that verifies
and check that it belongs to this config and data (the fingerprint stored in every checkpoint's state)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch.distributed as dist
import yaml

from inpo.online.shard import Shard
from inpo.train.checkpoint import atomic_write_text, load_latest_good_checkpoint
from inpo.train.config import TrainConfig, config_to_yaml
from inpo.train.loop import LOCK_NAME, RUN_MARKER, RunContext, claim_run_dir

# Keys a resumed run may change: where/how it runs and how far it goes, not what it computes.
_RESUME_FREE = {"resume", "max_steps", "iterations", "progress", "threads", "output", "device", "checkpoint_every",
                "keep_checkpoints", "evaluate", "n_bootstrap", "gen_batch_size", "overwrite",
                "keep_iterates", "report_to", "logging_steps"}
# File-valued keys whose content (not only their path) a resumed run must share.
_FINGERPRINT_FILES = ("data", "prompts", "eval_prompts")


def begin_run(cfg: TrainConfig, device, shard: Shard) -> tuple[RunContext, dict | None]:
    """Claim the output directory (rank 0: lock, clear a previous run on a fresh start, marker) and, with
    --resume, load the newest checkpoint that verifies and check that it belongs to this config and data.
    Called after every input has been validated (model, tokenizer, data, prompts, oracle): nothing is deleted
    before the run is known to be able to start."""
    if not cfg.output:
        raise ValueError("output is required: pass --output DIR (where metrics, checkpoints and the final model go)")
    out = Path(cfg.output)
    run = RunContext(cfg=cfg, out=out, device=device)
    run.fingerprint = run_fingerprint(cfg)

    def claim():
        previous = out.is_dir() and any(p.name not in (RUN_MARKER, LOCK_NAME) for p in out.iterdir())
        claim_run_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
        if previous and not cfg.resume:
            run.print(f"[inpo] starting fresh in {out} (the previous run's files were replaced)")

    shard.on_main(claim)
    ckpt = _resume_checkpoint(run, shard) if cfg.resume else None
    if run.is_main:
        atomic_write_text(out / "config.yaml", config_to_yaml(cfg))
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
    if "fingerprint" in st:
        _check_resume_fingerprint(st["fingerprint"], run.fingerprint, path)
    else:  # a checkpoint from before fingerprints: the saved config.yaml is all there is to compare
        _check_resume_config(cfg, out)
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


def run_fingerprint(cfg: TrainConfig) -> dict:
    """What a checkpoint must share with the run that resumes it: every config key that decides what is computed
    and the sha256 of the data / prompt files (stored in every checkpoint's state)."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    files = {}
    for key in _FINGERPRINT_FILES:
        value = getattr(cfg, key)
        if value and value != "default" and Path(value).is_file():
            files[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return {"config": config, "files": files}


def _check_resume_fingerprint(saved: dict, now: dict, path: Path) -> None:
    changed = [f"{k}: {saved['config'][k]!r} -> {v!r}" for k, v in sorted(now["config"].items())
               if k in saved.get("config", {}) and saved["config"][k] != v]
    for key in sorted(set(saved.get("files", {})) | set(now["files"])):
        a, b = saved.get("files", {}).get(key), now["files"].get(key)
        if a != b:
            changed.append(f"the content of {key} file {now['config'].get(key)!r} "
                           f"(sha256 {str(a)[:12]} -> {str(b)[:12]})")
    if changed:
        raise ValueError(f"--resume: {path.name} was written with other settings or data ({'; '.join(changed)}); "
                         f"resume with the same settings and files, or start a new run in another --output")


def _check_resume_config(cfg: TrainConfig, out: Path) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.to_dict()
    diff = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(now) if k in saved and k not in _RESUME_FREE
            and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume with a config that differs from the run in {out} ({'; '.join(diff)}); "
                         f"resume with the same settings, or start a new run in another --output")
