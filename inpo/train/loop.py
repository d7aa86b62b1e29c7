"""Orchestration around :func:`inpo.train.step.train_step`: epochs, shuffling, packing, the LR schedule,
metrics, checkpoints and resume -- shared by the online iterations (:mod:`inpo.online`) and offline training.

A training phase is a pure function of its inputs and the step index: step ``s`` of a phase takes epoch
``s // steps_per_epoch``'s seeded permutation of the pairs, slice ``s % steps_per_epoch``, packs it by the
token budget and runs one optimiser step. Resuming at step ``s`` therefore needs nothing but the
checkpointed model/optimizer/scheduler state -- which is why a resumed CPU run matches an uninterrupted
one bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from inpo.data.packing import pack_sequences
from inpo.paths import check_writable_path
from inpo.train.checkpoint import atomic_write_text, restore_training_state, save_checkpoint
from inpo.train.model import export_policy, unwrap
from inpo.train.optim import lr_schedule, make_optimizer, warmup_steps_of
from inpo.train.reporting import Reporter, step_line
from inpo.train.step import sequence_logps_of, train_step
from inpo.utils.dist import is_distributed, is_main, rank_world
from inpo.utils.mfu import step_mfu
from inpo.utils.record import append_jsonl

__all__ = ["RunContext", "train_phase", "precompute_logps", "StopRun", "Interrupted", "TrainingDiverged",
           "graceful_stop", "peak_memory_bytes", "resolve_device"]


class StopRun(Exception):
    """Raised when ``max_steps`` is reached: the run stops cleanly after a checkpoint."""


class Interrupted(StopRun):
    """SIGINT/SIGTERM: the run stopped at a step boundary after a checkpoint; exit code 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm: the run stops at that step; the last good checkpoint is kept."""


# -- graceful stop on SIGINT / SIGTERM -----------------------------------------------------------------------

_SIGNALS: list[int] = []  # signals received since graceful_stop() was entered


def stop_signal() -> int | None:
    """The first SIGINT/SIGTERM received under :func:`graceful_stop`, or None."""
    return _SIGNALS[0] if _SIGNALS else None


def agreed_stop_signal(device) -> int | None:
    """:func:`stop_signal`, agreed by every rank under torchrun (one tiny all-reduce), so that all ranks stop at
    the same boundary."""
    sig = stop_signal()
    if not is_distributed():
        return sig
    t = torch.tensor([float(sig or 0)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


@contextlib.contextmanager
def graceful_stop():
    """Within this block SIGINT and SIGTERM do not kill the run: they ask it to stop at the next step boundary
    (the training loop writes a checkpoint and raises :class:`Interrupted`). A second SIGINT aborts at once
    (KeyboardInterrupt). A no-op outside the main thread, where Python cannot install signal handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _SIGNALS and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not _SIGNALS:
            print(f"\n[inpo] {signal.Signals(signum).name}: stopping at the next step boundary with a checkpoint "
                  f"(Ctrl-C again aborts at once, without one)", file=sys.stderr, flush=True)
        _SIGNALS.append(signum)

    _SIGNALS.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _SIGNALS.clear()


def interrupted(where: str) -> Interrupted:
    import signal

    sig = stop_signal() or signal.SIGTERM
    return Interrupted(f"stopped by {signal.Signals(sig).name} {where}", sig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return dev


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated since the last ``torch.cuda.reset_peak_memory_stats`` (train_phase resets it
    before every step, so a step record holds that step's peak), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class RunContext:
    """Per-run state: the output directory, metrics file, global step and progress display."""

    cfg: object
    out: Path
    device: torch.device
    global_step: int = 0
    progress: object = None
    n_params: int = 0
    records: list = field(default_factory=list)
    tokenizer: object = None  # saved beside the weights in every checkpoint (a loadable model folder)
    reporter: object = None  # TensorBoard / W&B (inpo.train.reporting.Reporter), made on first use

    def __post_init__(self):
        if self.reporter is None:
            self.reporter = Reporter(self.cfg, self.out, self.is_main)
    fingerprint: dict = field(default_factory=dict)  # config + data hashes, stored in every checkpoint's state

    @property
    def is_main(self) -> bool:
        return is_main()

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.is_main:
            append_jsonl(self.metrics_path, record)
            self.reporter.log(record)

    def progress_line(self, record: dict, total: int) -> None:
        """Without progress bars (stdout not a terminal, or progress: false): a plain line every
        ``logging_steps`` steps and at a phase's last step."""

        every = getattr(self.cfg, "logging_steps", 10) or 10
        if self.progress is None and (record["iter_step"] % every == 0 or record["iter_step"] == total):
            self.print(step_line(record, total))

    def print(self, *args) -> None:
        if self.is_main:
            if self.progress is not None:
                self.progress.console.print(*args)
            else:
                print(*args, flush=True)

    def truncate_metrics(self, global_step: int, keep_iterations: int) -> None:
        """On resume: drop metric lines written after the checkpoint we resume from (they will be redone).

        Every rank reads the file (the records decide where a resumed run restarts, so all ranks must agree);
        rank 0 alone rewrites it, atomically, so a rank reading meanwhile sees the old or the new lines, which
        filter to the same records."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line cannot happen with append_jsonl, but never trust a file after a crash
            if rec.get("kind") == "step" and rec.get("step", 0) > global_step:
                continue
            if rec.get("kind") == "iteration" and rec.get("iteration", 0) >= keep_iterations:
                continue
            kept.append(rec)
        if self.is_main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.records = kept


def _phase_seed(seed: int, iteration: int, phase: str, epoch: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + epoch * 101 + sum(map(ord, phase))) % (2**63)


def _steps_of(n_units: int, batch: int, world: int) -> int:
    # Every rank needs at least one unit per step (FSDP collectives): a tail shorter than the world is dropped.
    full, tail = divmod(n_units, batch)
    return full + (1 if tail >= world else 0)


def reshard(model) -> None:
    """Put an FSDP2 model's parameters back in their sharded form (no-op for a plain model).

    The root unit keeps its parameters unsharded after a forward (``reshard_after_forward=False``) and only a
    backward reshards them; after a no-grad forward the module would still hold the unsharded tensors, and an
    optimizer built then would own tensors that are no longer the model's parameters."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@torch.no_grad()
def precompute_logps(model, seqs, *, max_tokens: int, impl: str = "auto", pairwise: bool = True) -> torch.Tensor:
    """Every sequence's summed response log-prob under ``model`` (no grad), in dataset order → [S] fp32 CPU.
    Collective for an FSDP2-sharded ``model``: every rank must call it with the same ``seqs``."""
    model.eval()
    out = torch.zeros(len(seqs), dtype=torch.float32)
    for batch in pack_sequences(seqs, max_tokens=max_tokens, pairwise=pairwise):
        out[batch.seq_ids] = sequence_logps_of(model, batch, impl=impl).cpu()
    reshard(model)
    return out


def train_phase(run: RunContext, model, seqs, side: dict, objective, *, iteration: int, phase: str = "train",
                start_step: int = 0, resume_ckpt: dict | None = None, extra_models: dict | None = None) -> dict:
    """Train ``model`` for ``cfg.epochs`` epochs on ``seqs`` (pairs 2i/2i+1 unless the objective is per
    sequence) with fresh AdamW + cosine schedule, logging a metrics line per step and checkpointing every
    ``cfg.checkpoint_every`` steps. ``start_step``/``resume_ckpt`` resume mid-phase. Raises :class:`StopRun`
    at ``cfg.max_steps`` (after a checkpoint). Returns a summary (steps, wall time, last loss)."""

    cfg = run.cfg
    rank, world = rank_world()
    pairwise = objective.pairwise
    n_units = len(seqs) // 2 if pairwise else len(seqs)
    spe = _steps_of(n_units, cfg.batch_pairs, world)
    if spe == 0:
        raise ValueError(f"no training data: {n_units} {'pairs' if pairwise else 'sequences'} for "
                         f"{world} rank(s); lower batch_pairs or add prompts")
    total = math.ceil(spe * cfg.epochs)  # a fractional epoch stops part-way through the data (TRL's rule)
    reshard(model)  # the optimizer must hold the sharded parameters, whatever ran on the model before
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.adam_epsilon)
    warmup = warmup_steps_of(total, warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps)
    scheduler = lr_schedule(optimizer, kind=cfg.lr_scheduler_type, total_steps=total, warmup=warmup,
                            min_lr_ratio=cfg.min_lr_ratio)
    if resume_ckpt is not None:
        restore_training_state(resume_ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
    task = None
    if run.progress is not None and run.is_main:
        task = run.progress.add_task(f"iter {iteration} {phase}", total=total, completed=start_step)
    t_phase, last = time.perf_counter(), {}
    perms: dict[int, list[int]] = {}
    for s in range(start_step, total):
        epoch, j = divmod(s, spe)
        if epoch not in perms:
            g = torch.Generator().manual_seed(_phase_seed(cfg.seed, iteration, phase, epoch))
            perms[epoch] = torch.randperm(n_units, generator=g).tolist()
        units = perms[epoch][j * cfg.batch_pairs:(j + 1) * cfg.batch_pairs]
        mine = units[rank::world]
        micro = _pack_units(seqs, mine, cfg.max_tokens, pairwise)
        if run.device.type == "cuda":  # the step's own peak, not the sampler's / precompute's before it
            torch.cuda.reset_peak_memory_stats(run.device)
        t0 = time.perf_counter()
        stats = train_step(model, micro, objective, optimizer, scheduler, side, max_grad_norm=cfg.max_grad_norm,
                           impl=cfg.impl, global_units=len(units), head_options=cfg.head_options(),
                           stop_requested=lambda: stop_signal() is not None)
        dt = time.perf_counter() - t0
        run.global_step += 1
        rec = {"kind": "step", "step": run.global_step, "iteration": iteration, "phase": phase, "epoch": epoch,
               "iter_step": s + 1, "loss": stats["loss"], "margin": stats["margin"], "lr": stats["lr"],
               "grad_norm": stats["grad_norm"], "tokens": stats["tokens"], "tokens_per_s": stats["tokens"] / dt,
               "step_time_s": dt, "peak_mem_bytes": peak_memory_bytes(run.device), **stats.get("trl", {})}
        if run.device.type == "cuda":
            util = step_mfu(getattr(model, "config", None), tokens=stats["tokens"], sum_sq=stats["sum_sq_len"],
                            seconds=dt, device_name=torch.cuda.get_device_name(run.device), world=world)
            if util is not None:
                rec["mfu"] = util
        run.log(rec)
        last = rec
        if not (math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])):
            raise TrainingDiverged(
                f"non-finite training at step {run.global_step} (iteration {iteration} {phase}, step {s + 1}/{total}): "
                f"loss {stats['loss']}, grad norm {stats['grad_norm']}, lr {stats['lr']:.3g}; stopped without "
                f"writing a checkpoint (the last good one is kept: --resume continues from it). Lower lr or "
                f"max_grad_norm, or check the data")
        if task is not None:
            run.progress.update(task, advance=1, description=f"iter {iteration} {phase} loss {stats['loss']:.3f}")
        else:
            run.progress_line(rec, total)
        state = {"iteration": iteration, "phase": phase, "iter_step": s + 1, "global_step": run.global_step,
                 "fingerprint": run.fingerprint}
        stop = cfg.max_steps is not None and run.global_step >= cfg.max_steps
        signalled = stats["stop"] and s + 1 < total  # at a phase's end the caller's "done" checkpoint comes first
        if s + 1 < total and (stop or signalled or
                              (cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0)):
            save_checkpoint(run.out, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                            extra_models=extra_models, keep=cfg.keep_checkpoints, tokenizer=run.tokenizer)
        if signalled:
            raise interrupted(f"at step {run.global_step} (iteration {iteration} {phase}, step {s + 1}/{total})")
        if stop and s + 1 < total:
            raise StopRun(f"max_steps={cfg.max_steps} reached at iteration {iteration}, step {s + 1}/{total}")
    if task is not None:
        run.progress.remove_task(task)
    return {"steps": total - start_step, "train_s": time.perf_counter() - t_phase, "last": last,
            "stop": cfg.max_steps is not None and run.global_step >= cfg.max_steps}


def _pack_units(seqs, units: list[int], max_tokens: int, pairwise: bool):
    """Pack the chosen units (pair or sequence indices) of ``seqs``; seq_ids index the full dataset."""
    width = 2 if pairwise else 1
    idx = [u * width + w for u in units for w in range(width)]
    batches = pack_sequences([seqs[i] for i in idx], max_tokens=max_tokens, pairwise=pairwise)
    lookup = torch.tensor(idx, dtype=torch.long)
    for b in batches:
        b.seq_ids = lookup[b.seq_ids]
    return batches


# -- the run directory: ownership marker, exclusive lock, clearing ---------------------------------------------

RUN_MARKER = ".inpo-run"  # written into every run directory: only a directory holding it is ever cleared
LOCK_NAME = ".inpo.lock"  # flock'ed by the trainer that owns the directory, for as long as it runs
_OWN_FILES = (RUN_MARKER, LOCK_NAME)


class RunDirError(ValueError):
    """The output directory cannot be used as asked (a file, not writable, not an inpo run, in use...)."""


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, an output that cannot hold a run or whose files a fresh start would
    destroy: a file, a path under a file, a folder we may not write, a non-empty folder that is not an inpo run
    (no marker: e.g. ``--output .``), and a previous run with checkpoints or ``final/`` unless ``overwrite``."""

    try:
        check_writable_path(out, "output", folder=True)
    except ValueError as exc:
        raise RunDirError(str(exc)) from None
    if resume or not out.is_dir():
        return
    entries = [p for p in out.iterdir() if p.name not in _OWN_FILES]
    if not entries:
        return
    if not (out / RUN_MARKER).is_file():
        shown = ", ".join(sorted(p.name for p in entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(f"output {str(out)!r} is not empty ({shown}) and is not an inpo run directory (no "
                          f"{RUN_MARKER} marker); refusing to delete anything in it: pass a new or empty --output")
    trained = [n for n in ("final", "checkpoints") if (out / n).is_dir() and any((out / n).iterdir())]
    if trained and not overwrite:
        raise RunDirError(f"output {str(out)!r} holds a previous run ({' and '.join(n + '/' for n in trained)}); "
                          f"continue it with --resume, pass --overwrite to replace it, or choose another --output")


class RunLock:
    """An exclusive ``flock`` on ``<run>/.inpo.lock``: one trainer per run directory. The kernel drops the lock
    when the process dies (kill -9 included), so a lock file left behind is never stale; the file only says who
    held it last (pid, host). ``flock`` works on local filesystems and on NFS (as a POSIX lock since Linux 2.6.12)."""

    _held: list["RunLock"] = []  # this process's locks, released by release_run_locks()

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: Path) -> "RunLock":
        import fcntl
        import socket

        path = out / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            error = _in_use(out, fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        lock = cls(path, fd)
        cls._held.append(lock)
        return lock

    def release(self) -> None:
        import fcntl

        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
        if self in RunLock._held:
            RunLock._held.remove(self)


def release_run_locks() -> None:
    """Release every run-directory lock this process holds (the end of ``run_training``, error or not)."""
    for lock in list(RunLock._held):
        lock.release()


def _in_use(out: Path, fd: int) -> RunDirError:
    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
    return RunDirError(f"output {str(out)!r} is in use by another inpo train ({holder}); wait for it to finish or "
                       f"choose another --output")


def probe_run_lock(out: Path) -> None:
    """Fail at once, before any model loads, when another trainer holds ``out``'s lock (creates nothing)."""
    import fcntl

    path = out / LOCK_NAME
    if not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _in_use(out, fd) from None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


def claim_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Rank 0: create ``out``, lock it, check it again under the lock, clear a previous run on a fresh start and
    write the marker. Raises :class:`RunDirError` with nothing deleted when the directory is not ours to use."""
    check_output_dir(out, resume=resume, overwrite=overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        RunLock.acquire(out)
    except OSError as exc:
        raise RunDirError(f"output {str(out)!r}: cannot create or lock it ({exc.strerror or exc})") from None
    check_output_dir(out, resume=resume, overwrite=overwrite)  # another process may have written in between
    if not resume and (out / RUN_MARKER).is_file():
        clear_run_dir(out)
    if not (out / RUN_MARKER).is_file():
        atomic_write_text(out / RUN_MARKER, "inpo run directory: `inpo train` may replace its contents\n")


def clear_run_dir(out: Path) -> None:
    """Remove a previous run's artefacts (a fresh start without --resume); leaves unrelated files alone.
    Only for a directory marked as an inpo run (``check_output_dir`` / ``claim_run_dir`` decide)."""
    if not (out / RUN_MARKER).is_file():
        raise RunDirError(f"refusing to clear {str(out)!r}: not an inpo run directory (no {RUN_MARKER} marker)")
    for name in ("checkpoints", "final", "metrics.jsonl", "eval_ref_responses.jsonl", "config.yaml", "summary.json",
                 "tensorboard"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in out.glob("iter_*"):
        if p.is_dir():
            shutil.rmtree(p)


def export_final(run: RunContext, model, tokenizer, dest: Path | None = None, meta: dict | None = None) -> Path:
    """``save_pretrained`` + tokenizer into ``dest`` (default ``<out>/final``), published atomically (tmp dir +
    rename); ``meta`` is written into it as ``inpo_export.json``. Collective under FSDP (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    full = None
    if is_distributed():
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = Path(dest) if dest is not None else run.out / "final"
    if not run.is_main:
        return final
    bad = next((n for n, p in (full or dict(inner.named_parameters())).items()
                if p.is_floating_point() and not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise TrainingDiverged(f"the trained policy's weight {bad!r} is not finite (NaN/inf): {final} is not written; "
                               f"the checkpoints hold the last good weights")
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if full is None:
        export_policy(inner, tokenizer, tmp)
    else:
        # A plain (unsharded) twin built on the meta device takes the gathered tensors by assignment, so the
        # export costs no second copy of the weights and transformers handles tied embeddings as usual.
        with torch.device("meta"):
            plain = type(inner)(inner.config)
        plain.load_state_dict({k.removeprefix("model."): v for k, v in full.items()}, assign=True, strict=False)
        plain.tie_weights()
        export_policy(plain, tokenizer, tmp)
    if meta is not None:
        (tmp / "inpo_export.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    old = final.with_name(final.name + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
