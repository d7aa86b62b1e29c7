"""The training step: decoder body → hidden states → fused head (log-probs → objective) → backward.

It reads top to bottom on one screen on purpose; orchestration (data, schedule, checkpoints, iterations)
lives in :mod:`inpo.train.loop` and :mod:`inpo.online`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor

from inpo.data.packing import PackedBatch
from inpo.objectives import Objective
from inpo.ops import preference_loss, raise_pending_value_errors, response_lengths, sequence_logps
from inpo.train.body import HeadInputs, hidden_and_head
from inpo.train.reporting import TRL_PAIR_KEYS, pair_metric_sums, trl_metrics
from inpo.utils.dist import get_world_size

__all__ = ["train_step", "fused_head_loss", "sequence_logps_of", "gather_side", "autocast"]


def autocast(device: torch.device):
    """The trainer's precision policy for a forward: bf16 autocast on CUDA, plain fp32 on CPU."""
    # bf16 body on GPU (fp32 master weights); CPU stays fp32 so that runs are exact and resumable bit for bit.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device_of(model) -> torch.device:
    p = next(model.parameters())
    return p.device if not hasattr(p, "device_mesh") else torch.device(p.device_mesh.device_type)


@torch.no_grad()
def sequence_logps_of(model, batch: PackedBatch, *, impl: str = "auto", head_options: dict | None = None) -> Tensor:
    """π(y|x) summed over response tokens for each sequence of ``batch`` → ``[S]`` fp32 (no grad).
    ``head_options``: ``grad_filter`` / ``deterministic`` of the fused head (``TrainConfig.head_options()``)."""
    device = _device_of(model)
    b = batch.to(device)
    with autocast(device):
        head = hidden_and_head(model, b.input_ids, b.position_ids)
        return sequence_logps(head.hidden, head.weight, b.labels, b.cu_seqlens, impl=impl, check_values=False,
                              **head.kwargs(), **(head_options or {})).float()


def gather_side(side: dict, batch: PackedBatch, device) -> dict:
    """Pick this micro-batch's rows of the per-sequence side inputs (ref_logps, anchor_logps, targets)."""
    return {k: None if v is None else v[batch.seq_ids].to(device) for k, v in side.items()}


def fused_head_loss(objective: Objective, *, impl: str = "auto", head_options: dict | None = None):
    """The trainer's head loss: the fused head's log-probs → the objective (:func:`inpo.ops.preference_loss`).
    A head loss maps ``(head, batch, side)`` -- :class:`~inpo.train.body.HeadInputs`, the packed micro-batch, its
    side inputs -- to ``(mean loss, per-sequence log-probs)``."""
    def head_loss(head: HeadInputs, batch: PackedBatch, side: dict) -> tuple[Tensor, Tensor]:
        return preference_loss(head.hidden, head.weight, batch.labels, batch.cu_seqlens, objective, impl=impl,
                               return_logps=True, check_values=False, **head.kwargs(), **side,
                               **(head_options or {}))

    return head_loss


def train_step(model, micro_batches: list[PackedBatch], objective: Objective | None, optimizer, scheduler,
               side: dict, *, max_grad_norm: float = 1.0, impl: str = "auto", global_units: int | None = None,
               head_options: dict | None = None, stop_requested=False, head_loss=None) -> dict:
    """One optimiser step with gradient accumulation over ``micro_batches``.

    Each micro-batch's mean loss is weighted by its share of the step's pairs (sequences for SPPO), so the
    gradient is that of the mean over the whole step however the pairs were packed. ``global_units`` is the
    step's unit count over all data-parallel ranks (FSDP averages gradients over ranks, hence ×world size).
    ``head_loss`` replaces the fused head + ``objective`` (:func:`fused_head_loss`; ``impl`` and ``head_options``
    -- ``grad_filter``, ``deterministic``, ``TrainConfig.head_options()`` -- are its arguments); with
    ``objective=None`` (e.g. the default policy's SFT) no margin or TRL metrics are kept.
    Returns loss, margin (mean objective margin), grad_norm, lr, tokens, sum_sq_len (Σ of squared sequence
    lengths, the attention term of :func:`inpo.utils.mfu.model_flops`), units, and ``stop``: whether
    ``stop_requested`` (a bool, or a callable asked at the end of the step) was true on any rank, agreed in the
    step's one all-reduce and one host sync, which also carry the grad norm, so the caller checks loss and grad
    norm for NaN/inf at no extra cost.
    """
    device, world = _device_of(model), get_world_size()
    units = sum(mb.n_units for mb in micro_batches)
    total = global_units if global_units is not None else units
    head_loss = head_loss or fused_head_loss(objective, impl=impl, head_options=head_options)
    sums = _StepSums(objective, device)
    model.train()
    for mb in micro_batches:
        b, s = mb.to(device), gather_side(side, mb, device)
        with autocast(device):
            head = hidden_and_head(model, b.input_ids, b.position_ids)  # hidden, weight + bias, logit transform
            loss, logps = head_loss(head, b, s)
        (loss * (mb.n_units * world / total)).backward()
        sums.add(loss, logps, s, b)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    stop_requested = stop_requested() if callable(stop_requested) else stop_requested  # a signal during this step
    return sums.reduce(grad_norm, lr, stop_requested, world)


class _StepSums:
    """A step's logged sums over its micro-batches (loss, margin, units, tokens, Σ squared lengths, TRL's
    rewards/* and logps/*), reduced over ranks with the stop flag and the grad norm in one all-reduce and read
    in one host sync."""

    def __init__(self, objective: Objective | None, device):
        self.objective, self.device = objective, device
        self.pairwise = objective is not None and objective.pairwise
        self.loss = self.margin = 0.0
        self.units = self.tokens = 0
        self.sum_sq_len = 0.0
        self.trl = torch.zeros(len(TRL_PAIR_KEYS), device=device)  # TRL's rewards/* and logps/* sums (pairwise)

    def add(self, loss: Tensor, logps: Tensor, side: dict, batch: PackedBatch) -> None:
        objective = self.objective
        self.loss += loss.detach() * batch.n_units
        if objective is not None:
            lengths = response_lengths(batch.labels, batch.cu_seqlens) if objective.needs_lengths else None
            self.margin += objective.margin(logps, side.get("ref_logps"), side.get("anchor_logps"),
                                            lengths=lengths).sum()
        if self.pairwise:
            self.trl += pair_metric_sums(objective, logps.detach(), side)
        self.units += batch.n_units
        self.tokens += batch.n_tokens
        # attention FLOPs; a tensor summed in fp64, read with the step's other sums (not a host read of its own)
        self.sum_sq_len += batch.cu_seqlens.diff().double().square().sum()

    def reduce(self, grad_norm: Tensor, lr: float, stop_requested: bool, world: int) -> dict:
        device = self.device
        stats = torch.stack([torch.as_tensor(x, device=device, dtype=torch.float32).reshape(())
                             for x in (self.loss, self.margin, float(self.units), float(self.tokens), self.sum_sq_len,
                                       float(stop_requested))] + list(self.trl.unbind()))
        if world > 1:
            dist.all_reduce(stats)  # one collective for all the logged sums (and the stop flags)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        stats = torch.cat([stats, grad_norm.detach().to(device=device, dtype=torch.float32).reshape(1)])
        loss_v, margin_v, units_v, tokens_v, sum_sq_v, stop_v, *trl_v, grad_norm_v = stats.tolist()  # the host sync
        # The head's deferred label / cu_seqlens checks (CUDA, check_values=False) are complete after that sync:
        # raise a bad batch's error at this step, not one head call later (free: nothing is left to wait for).
        raise_pending_value_errors(wait=True)
        out = {"loss": loss_v / max(units_v, 1), "margin": margin_v / max(units_v, 1), "grad_norm": grad_norm_v,
               "lr": lr, "tokens": int(tokens_v), "sum_sq_len": sum_sq_v, "units": int(units_v), "stop": stop_v > 0}
        if self.pairwise:
            out["trl"] = trl_metrics(trl_v, units_v)
        return out
