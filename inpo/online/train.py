"""Phase 4 of an iteration: the objective's training phases on the iteration's sequences, then the iteration's
"done" checkpoint.

Most objectives train the policy once (phase ``train``). An objective with an auxiliary chain (ONPO) trains two
regressions on π_t's pairs: π'_{t+1} against anchor π'_t (phase ``aux``), then π_{t+1} against anchor π'_{t+1}
(phase ``train``; π'_{t+1}'s log-probs are cached as ``iter_<t>/logps_aux_next.safetensors``). A checkpoint
inside a phase resumes in that phase at its step; the phases before it are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from inpo.online.cache import TENSORS, cached_phase
from inpo.online.run import OnlineRun
from inpo.train.checkpoint import load_model_weights, save_checkpoint
from inpo.train.loop import precompute_logps, train_phase


@dataclass(frozen=True)
class TrainingPhase:
    name: str  # the checkpoint's phase name
    model: torch.nn.Module
    side: Callable[[], dict]  # the side inputs, made when the phase starts
    extra_models: dict | None = None  # checkpointed beside ``model``


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: iteration ``iteration`` from ``phase`` (None: its start; ``"aux"`` / ``"train"``:
    inside that training phase at ``step``, with the checkpoint ``ckpt``; ``"evaluate"``: the iteration trained
    and checkpointed, its iterate folder and evaluation come next)."""

    iteration: int = 0
    phase: str | None = None
    step: int = 0
    ckpt: dict | None = None


def training_phases(ctx: OnlineRun, t: int, seqs, data: list[dict], logps: dict) -> list[TrainingPhase]:
    m, objective = ctx.models, ctx.objective
    if not objective.aux_chain:
        return [TrainingPhase("train", m.policy, lambda: objective.side_inputs(logps, data))]

    def next_aux() -> dict:  # π'_{t+1}'s log-probs (under torchrun a collective pass with the sharded π')
        cfg = ctx.cfg
        anchor = cached_phase(ctx.iter_dir(t) / "logps_aux_next.safetensors", TENSORS,
                              lambda: {"aux_next": precompute_logps(m.aux, seqs, max_tokens=cfg.max_tokens,
                                                                    impl=cfg.impl)}, ctx.shard)
        return {"anchor_logps": anchor["aux_next"]}

    return [TrainingPhase("aux", m.aux, lambda: {"anchor_logps": logps["aux"]}, {"policy": m.policy}),
            TrainingPhase("train", m.policy, next_aux, {"aux": m.aux})]


def train_iteration(ctx: OnlineRun, t: int, seqs, data: list[dict], logps: dict, at: ResumePoint) -> dict:
    """Run iteration ``t``'s training phases from the resume point ``at`` on; returns the last phase's summary."""
    phases = training_phases(ctx, t, seqs, data, logps)
    names = [p.name for p in phases]
    summary: dict = {}
    for phase in phases[names.index(at.phase) if at.phase in names else 0:]:
        resuming = phase.name == at.phase
        summary = train_phase(ctx.run, phase.model, seqs, phase.side(), ctx.objective, iteration=t, phase=phase.name,
                              start_step=at.step if resuming else 0, resume_ckpt=at.ckpt if resuming else None,
                              extra_models=phase.extra_models)
    return summary


def checkpoint_done(ctx: OnlineRun, t: int) -> None:
    """The iteration's "done" checkpoint: π_{t+1} (and π'_{t+1}), which a resumed run starts the next one from."""
    run, m = ctx.run, ctx.models
    save_checkpoint(run.out, model=m.policy, state={"iteration": t, "phase": "done", "global_step": run.global_step,
                                                    "fingerprint": run.fingerprint},
                    extra_models={"aux": m.aux} if m.aux is not None else None, keep=ctx.cfg.keep_checkpoints,
                    tokenizer=ctx.tokenizer)


def resume_point(ctx: OnlineRun, ckpt: dict | None) -> ResumePoint:
    """Where the run continues after checkpoint ``ckpt`` (loading its models), or the start without one."""
    if ckpt is None:
        return ResumePoint()
    st, m = ckpt["state"], ctx.models
    if st["phase"] == "done":
        load_model_weights(m.policy, ckpt["model"])
    if m.aux is not None and "aux" in ckpt["extra_models"]:
        load_model_weights(m.aux, ckpt["extra_models"]["aux"])
    if "policy" in ckpt["extra_models"]:
        load_model_weights(m.policy, ckpt["extra_models"]["policy"])
    if st["phase"] != "done":
        return ResumePoint(st["iteration"], st["phase"], st["iter_step"], ckpt)
    logged = [r for r in ctx.run.records if r.get("kind") == "iteration"]
    if len(logged) <= st["iteration"]:  # the iteration finished training but its evaluation was lost
        return ResumePoint(st["iteration"], "evaluate")
    return ResumePoint(st["iteration"] + 1)
