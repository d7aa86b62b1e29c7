"""The loop: T iterations of sample → rank → precompute → train → checkpoint → keep π_{t+1} → evaluate, each
phase's output written before it is used (:func:`~inpo.online.cache.cached_phase`), so that ``--resume`` continues
at the checkpoint's next phase. Offline training is the same loop with a pairs-file source and T = 1."""

from __future__ import annotations

import functools
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from inpo.online.export import export_model, keep_iterate
from inpo.online.generate import RunSampler
from inpo.online.models import Models, setup
from inpo.online.precompute import precomputed_logps
from inpo.online.resume import begin_run
from inpo.online.run import OnlineRun
from inpo.online.shard import Shard
from inpo.online.sources import OnlineSource, PairsSource
from inpo.online.train import ResumePoint, checkpoint_done, resume_point, train_iteration
from inpo.train.config import TrainConfig
from inpo.train.loop import StopRun, agreed_stop_signal, graceful_stop, interrupted
from inpo.train.rundir import check_output_dir, probe_run_lock, release_run_locks

__all__ = ["run_online", "run_offline", "run_training"]


def run_training(config: TrainConfig) -> list[dict]:
    """Online iterations, or offline training when ``config.data`` names a JSONL file. ``StopRun`` at
    ``max_steps`` propagates after its checkpoint; so does :class:`~inpo.train.loop.Interrupted` after SIGINT /
    SIGTERM (the run stops at the next step boundary with a checkpoint). The output directory's lock is released
    on the way out, whatever happens."""
    if config.output:  # before the model loads: an output we could not use fails in a second, nothing touched
        out = Path(config.output)
        Shard.current().on_main(lambda: (check_output_dir(out, resume=config.resume, overwrite=config.overwrite),
                                         probe_run_lock(out)))
    with graceful_stop():
        return run_offline(config) if config.data else run_online(config)


def _releasing_run_locks(fn):
    """The output directory's lock is released when ``fn`` returns or raises (callers such as the iteration
    bench call run_online directly, several runs in one process)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_run_locks()

    return wrapper


@_releasing_run_locks
def run_online(config: TrainConfig) -> list[dict]:
    """The T-iteration online loop. Returns the per-iteration records (also in ``<out>/metrics.jsonl``)."""
    return _run(config, lambda cfg, tokenizer, device, ref: OnlineSource(cfg, tokenizer, device, ref))


@_releasing_run_locks
def run_offline(config: TrainConfig) -> list[dict]:
    """Train on a JSONL file of TRL-style ``{"prompt", "chosen", "rejected"}`` records (one pass of
    ``epochs`` epochs). INPO runs with π_t = π_ref; DPO/IPO use π_ref as the reference."""
    return _run(config, lambda cfg, tokenizer, device, ref: PairsSource(cfg, tokenizer))


def _run(cfg: TrainConfig, make_source) -> list[dict]:
    shard = Shard.current()
    device, tokenizer, ref, policy = setup(cfg)
    source = make_source(cfg, tokenizer, device, ref)  # every input is checked before the output dir is touched
    objective = cfg.make_objective()
    models = Models.build(ref, policy, shard, aux_chain=objective.aux_chain, twin=source.iterates)
    run, ckpt = begin_run(cfg, device, shard)
    run.print(f"[inpo] {cfg.default_notes()}")
    run.n_params = sum(p.numel() for p in models.policy.parameters())
    run.tokenizer = tokenizer
    ctx = OnlineRun(run=run, shard=shard, models=models, objective=objective, tokenizer=tokenizer, source=source)
    at = resume_point(ctx, ckpt)
    if banner := source.banner(objective, device):
        run.print(banner)
    if at.iteration >= source.iterations:
        run.print(f"[inpo] the run is complete ({source.iterations} iteration(s)); exporting the final model again")
    records = [r for r in run.records if r.get("kind") == "iteration"]
    # one sampler (one engine) per run
    with RunSampler(cfg, tokenizer, source.plan, run.print) as ctx.sampler, _progress(cfg) as run.progress:
        for t in range(at.iteration, source.iterations):
            _check_stop(ctx, t, at)
            rec = run_iteration(ctx, t, at)
            at = ResumePoint(t + 1)
            run.log(rec)
            records.append(rec)
            _print_iteration(run, rec)
    run.progress = None
    if agreed_stop_signal(device) is not None:
        raise interrupted("before the final export")
    export_model(run, models.policy, tokenizer)
    run.reporter.close()
    return records


def run_iteration(ctx: OnlineRun, t: int, at: ResumePoint) -> dict:
    """Iteration ``t`` from the resume point ``at``: its record (also what each phase took, in seconds)."""
    times: dict = {}
    t_iter = time.perf_counter()
    summary = None
    if at.phase == "evaluate":  # trained and checkpointed before the stop: its iterate folder may be missing
        stats = ctx.source.stats(ctx, t)
        keep_iterate(ctx, t, if_missing=True)
    else:
        model_t = ctx.models.current()  # π_t (under torchrun the plain twin, loaded with the policy's weights)
        data, seqs, stats = ctx.source.data(ctx, t, model_t, times)
        logps = precomputed_logps(ctx, t, seqs, model_t, times)
        t0 = time.perf_counter()
        summary = train_iteration(ctx, t, seqs, data, logps, at)
        times["train_s"] = time.perf_counter() - t0
        checkpoint_done(ctx, t)
        if ctx.source.iterates:
            keep_iterate(ctx, t)
    rec = {"kind": "iteration", "iteration": t, **ctx.source.fields(stats, summary), "step": ctx.run.global_step,
           **times}
    t0 = time.perf_counter()
    if evaluation := ctx.source.evaluate(ctx, t):
        rec.update(evaluation, eval_s=time.perf_counter() - t0)
    rec["wall_s"] = time.perf_counter() - t_iter
    return rec


def _check_stop(ctx: OnlineRun, t: int, at: ResumePoint) -> None:
    """Stop before iteration ``t`` on SIGINT/SIGTERM (iteration t-1's checkpoint is written) or at ``max_steps``."""
    cfg, run = ctx.cfg, ctx.run
    if t > at.iteration and agreed_stop_signal(run.device) is not None:
        raise interrupted(f"after iteration {t - 1}")
    if cfg.max_steps is not None and run.global_step >= cfg.max_steps and at.phase != "evaluate":
        raise StopRun(f"max_steps={cfg.max_steps} reached after iteration {t - 1}")


def _print_iteration(run, rec: dict) -> None:
    if "win_rate" in rec:
        run.print(f"[inpo] iteration {rec['iteration']}: win-rate vs π_ref {rec['win_rate']:.3f} "
                  f"[{rec['win_rate_ci_low']:.3f}, {rec['win_rate_ci_high']:.3f}]  "
                  f"pairs {rec['pairs']}  oracle queries {rec['oracle_queries']}  {rec['wall_s']:.1f} s")


def _progress(cfg: TrainConfig):
    if not cfg.progress or not sys.stdout.isatty():  # a log file gets plain progress lines instead of bars
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)
