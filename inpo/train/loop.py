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
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from inpo.data.packing import pack_sequences
from inpo.train.checkpoint import restore_training_state, save_checkpoint
from inpo.train.model import unwrap
from inpo.train.optim import lr_schedule, make_optimizer, warmup_steps_of
from inpo.train.reporting import Reporter, step_line
from inpo.train.resume import TrainingDiverged, diverged
from inpo.train.rundir import record_entry
from inpo.train.step import sequence_logps_of, train_step
from inpo.utils.dist import is_distributed, is_main, rank_world
from inpo.utils.io import append_jsonl, atomic_write_text
from inpo.utils.mfu import step_mfu
from inpo.utils.model_folder import NonFiniteWeights, save_model

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
    (KeyboardInterrupt). A signal the process inherited as ignored stays ignored (``nohup``, a background job of a
    script: ``cmd &`` starts with SIGINT ignored), as the user who started it that way asked. The handlers in place
    before are restored on the way out. A no-op outside the main thread, where Python cannot install handlers."""
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
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, h in previous.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _SIGNALS.clear()


def interrupted(where: str) -> Interrupted:
    import signal

    sig = stop_signal() or signal.SIGTERM
    return Interrupted(f"stopped by {signal.Signals(sig).name} {where}", sig)


def resolve_device(name: str, what: str = "device") -> torch.device:
    """``auto`` → CUDA when available, else the CPU; ``cpu``; ``cuda`` / ``cuda:N`` when that device exists here.
    Anything else is a ValueError naming ``what`` and the value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"{what} must be auto, cpu, cuda or cuda:N, got {name!r}")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}={name!r} but CUDA is not available here; use {what}=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
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
    owned: set = field(default_factory=set)  # top-level entries already recorded in the run's manifest

    @property
    def is_main(self) -> bool:
        return is_main()

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def own(self, name: str) -> Path:
        """``out / name``, a top-level entry this run writes, recorded in the run directory's manifest first (rank
        0), so that a later ``--overwrite`` deletes it and nothing else (:mod:`inpo.train.rundir`)."""
        if self.is_main and name not in self.owned:
            record_entry(self.out, name)
            self.owned.add(name)
        return self.out / name

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.is_main:
            append_jsonl(self.own("metrics.jsonl"), record)
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
    plan = _PhasePlan.of(cfg, objective, len(seqs), iteration, phase)
    reshard(model)  # the optimizer must hold the sharded parameters, whatever ran on the model before
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.adam_epsilon)
    warmup = warmup_steps_of(plan.total, warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps)
    scheduler = lr_schedule(optimizer, kind=cfg.lr_scheduler_type, total_steps=plan.total, warmup=warmup,
                            min_lr_ratio=cfg.min_lr_ratio)
    if resume_ckpt is not None:
        restore_training_state(resume_ckpt, model=model, optimizer=optimizer, scheduler=scheduler, lr=cfg.lr)
    at = _Where(run, iteration, phase, plan.total)
    task = at.start_task(start_step)
    t_phase, last = time.perf_counter(), {}
    for s in range(start_step, plan.total):
        epoch, units = plan.step_units(s)
        micro = _pack_units(seqs, units[plan.rank::plan.world], cfg.max_tokens, plan.pairwise)
        stats, dt = _timed_step(run, model, micro, objective, optimizer, scheduler, side, global_units=len(units))
        run.global_step += 1
        last = _step_record(run, model, stats, dt, iteration=iteration, phase=phase, epoch=epoch, iter_step=s + 1)
        run.log(last)
        at.check_finite(stats, s + 1)
        at.show(task, last, stats)
        at.checkpoint_or_stop(stats, s + 1, model=model, optimizer=optimizer, scheduler=scheduler,
                              extra_models=extra_models)
    if task is not None:
        run.progress.remove_task(task)
    return {"steps": plan.total - start_step, "train_s": time.perf_counter() - t_phase, "last": last,
            "stop": cfg.max_steps is not None and run.global_step >= cfg.max_steps}


@dataclass
class _PhasePlan:
    """Which units (pairs, or sequences) each step of a phase trains on: step ``s`` takes epoch
    ``s // steps_per_epoch``'s seeded permutation of the units, slice ``s % steps_per_epoch`` of ``batch`` units;
    each rank takes every ``world``-th of them."""

    n_units: int
    batch: int
    steps_per_epoch: int
    total: int
    pairwise: bool
    rank: int
    world: int
    seed: int
    iteration: int
    phase: str
    perms: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg, objective, n_seqs: int, iteration: int, phase: str) -> _PhasePlan:
        rank, world = rank_world()
        pairwise = objective.pairwise
        n_units = n_seqs // 2 if pairwise else n_seqs
        spe = _steps_of(n_units, cfg.batch_pairs, world)
        if spe == 0:
            raise ValueError(f"no training data: {n_units} {'pairs' if pairwise else 'sequences'} for "
                             f"{world} rank(s); lower batch_pairs or add prompts")
        total = math.ceil(spe * cfg.epochs)  # a fractional epoch stops part-way through the data (TRL's rule)
        return cls(n_units, cfg.batch_pairs, spe, total, pairwise, rank, world, cfg.seed, iteration, phase)

    def step_units(self, s: int) -> tuple[int, list[int]]:
        """``(epoch, units)`` of step ``s``: the step's units over all ranks."""
        epoch, j = divmod(s, self.steps_per_epoch)
        if epoch not in self.perms:
            g = torch.Generator().manual_seed(_phase_seed(self.seed, self.iteration, self.phase, epoch))
            self.perms[epoch] = torch.randperm(self.n_units, generator=g).tolist()
        return epoch, self.perms[epoch][j * self.batch:(j + 1) * self.batch]


def _timed_step(run: RunContext, model, micro, objective, optimizer, scheduler, side: dict, *,
                global_units: int) -> tuple[dict, float]:
    cfg = run.cfg
    if run.device.type == "cuda":  # the step's own peak, not the sampler's / precompute's before it
        torch.cuda.reset_peak_memory_stats(run.device)
    t0 = time.perf_counter()
    stats = train_step(model, micro, objective, optimizer, scheduler, side, max_grad_norm=cfg.max_grad_norm,
                       impl=cfg.impl, global_units=global_units, head_options=cfg.head_options(),
                       stop_requested=lambda: stop_signal() is not None)
    return stats, time.perf_counter() - t0


def _step_record(run: RunContext, model, stats: dict, dt: float, **where) -> dict:
    """The step's metrics line (``where``: iteration, phase, epoch, iter_step)."""
    rec = {"kind": "step", "step": run.global_step, **where, "loss": stats["loss"], "margin": stats["margin"],
           "lr": stats["lr"], "grad_norm": stats["grad_norm"], "tokens": stats["tokens"],
           "tokens_per_s": stats["tokens"] / dt, "step_time_s": dt, "peak_mem_bytes": peak_memory_bytes(run.device),
           **stats.get("trl", {})}
    if run.device.type == "cuda":
        util = step_mfu(getattr(model, "config", None), tokens=stats["tokens"], sum_sq=stats["sum_sq_len"],
                        seconds=dt, device_name=torch.cuda.get_device_name(run.device), world=rank_world()[1])
        if util is not None:
            rec["mfu"] = util
    return rec


@dataclass
class _Where:
    """A phase's position for its progress display, its messages and its checkpoints' state."""

    run: RunContext
    iteration: int
    phase: str
    total: int

    def text(self, step: int) -> str:
        return f"iteration {self.iteration} {self.phase}, step {step}/{self.total}"

    def start_task(self, start_step: int):
        run = self.run
        if run.progress is None or not run.is_main:
            return None
        return run.progress.add_task(f"iter {self.iteration} {self.phase}", total=self.total, completed=start_step)

    def show(self, task, rec: dict, stats: dict) -> None:
        if task is not None:
            self.run.progress.update(task, advance=1,
                                     description=f"iter {self.iteration} {self.phase} loss {stats['loss']:.3f}")
        else:
            self.run.progress_line(rec, self.total)

    def check_finite(self, stats: dict, step: int) -> None:
        if not (math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])):
            run = self.run
            raise diverged(run.out, where=f"at step {run.global_step} ({self.text(step)})", stats=stats,
                           lr=run.cfg.lr, is_main=run.is_main)

    def checkpoint_or_stop(self, stats: dict, step: int, *, model, optimizer, scheduler, extra_models) -> None:
        """After a step inside the phase: a checkpoint every ``checkpoint_every`` steps and before stopping at
        ``max_steps`` or on a signal, then the stop (at the phase's end the caller's "done" checkpoint comes first)."""
        run, cfg = self.run, self.run.cfg
        if step == self.total:
            return
        stop = cfg.max_steps is not None and run.global_step >= cfg.max_steps
        periodic = cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0
        if stop or stats["stop"] or periodic:
            state = {"iteration": self.iteration, "phase": self.phase, "iter_step": step,
                     "global_step": run.global_step, "fingerprint": run.fingerprint}
            save_checkpoint(run.out, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                            extra_models=extra_models, keep=cfg.keep_checkpoints, tokenizer=run.tokenizer)
        if stats["stop"]:
            raise interrupted(f"at step {run.global_step} ({self.text(step)})")
        if stop:
            raise StopRun(f"max_steps={cfg.max_steps} reached at iteration {self.iteration}, step {step}/{self.total}")


def _pack_units(seqs, units: list[int], max_tokens: int, pairwise: bool):
    """Pack the chosen units (pair or sequence indices) of ``seqs``; seq_ids index the full dataset."""
    width = 2 if pairwise else 1
    idx = [u * width + w for u in units for w in range(width)]
    batches = pack_sequences([seqs[i] for i in idx], max_tokens=max_tokens, pairwise=pairwise)
    lookup = torch.tensor(idx, dtype=torch.long)
    for b in batches:
        b.seq_ids = lookup[b.seq_ids]
    return batches


def export_final(run: RunContext, model, tokenizer, dest: Path | None = None, meta: dict | None = None) -> Path:
    """``save_pretrained`` + tokenizer into ``dest`` (default ``<out>/final``) through the one model-folder writer
    (NaN guard, free space, atomic publish); ``meta`` is written into it as ``inpo_export.json``. Collective under
    FSDP (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    full = None
    if is_distributed():
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = Path(dest) if dest is not None else run.out / "final"
    if not run.is_main:
        return final
    if final.absolute().is_relative_to(run.out.absolute()):
        run.own(final.absolute().relative_to(run.out.absolute()).parts[0])
    if full is not None:
        # A plain (unsharded) twin built on the meta device takes the gathered tensors by assignment, so the
        # export costs no second copy of the weights and transformers handles tied embeddings as usual.
        with torch.device("meta"):
            plain = type(inner)(inner.config)
        plain.load_state_dict({k.removeprefix("model."): v for k, v in full.items()}, assign=True, strict=False)
        plain.tie_weights()
        inner = plain
    files = {"inpo_export.json": json.dumps(meta, indent=1, sort_keys=True)} if meta is not None else None
    try:
        return save_model(inner, final, tokenizer, files=files)
    except NonFiniteWeights as exc:
        raise TrainingDiverged(f"the trained policy's weight {exc.weight!r} is not finite (NaN/inf): {final} is not "
                               f"written; the checkpoints hold the last good weights") from None


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
