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
from inpo.train.model import hidden_and_head
from inpo.train.reporting import TRL_PAIR_KEYS, pair_metric_sums, trl_metrics
from inpo.utils.dist import get_world_size

__all__ = ["train_step", "sequence_logps_of", "gather_side", "autocast"]


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
        hidden, weight, bias = hidden_and_head(model, b.input_ids, b.position_ids)
        return sequence_logps(hidden, weight, b.labels, b.cu_seqlens, bias=bias, impl=impl, check_values=False,
                              **(head_options or {})).float()


def gather_side(side: dict, batch: PackedBatch, device) -> dict:
    """Pick this micro-batch's rows of the per-sequence side inputs (ref_logps, anchor_logps, targets)."""
    return {k: None if v is None else v[batch.seq_ids].to(device) for k, v in side.items()}


def train_step(model, micro_batches: list[PackedBatch], objective: Objective, optimizer, scheduler, side: dict, *,
               max_grad_norm: float = 1.0, impl: str = "auto", global_units: int | None = None,
               head_options: dict | None = None, stop_requested=False) -> dict:
    """One optimiser step with gradient accumulation over ``micro_batches``.

    Each micro-batch's mean loss is weighted by its share of the step's pairs (sequences for SPPO), so the
    gradient is that of the mean over the whole step however the pairs were packed. ``global_units`` is the
    step's unit count over all data-parallel ranks (FSDP averages gradients over ranks, hence ×world size).
    ``head_options`` (``grad_filter``, ``deterministic``) go to the fused head (``TrainConfig.head_options()``).
    Returns loss, margin (mean objective margin), grad_norm, lr, tokens, sum_sq_len (Σ of squared sequence
    lengths, the attention term of :func:`inpo.utils.mfu.model_flops`), units, and ``stop``: whether
    ``stop_requested`` (a bool, or a callable asked at the end of the step) was true on any rank, agreed in the
    step's one all-reduce and one host sync, which also carry the grad norm, so the caller checks loss and grad
    norm for NaN/inf at no extra cost.
    """
    device = _device_of(model)
    world = get_world_size()
    units = sum(mb.n_units for mb in micro_batches)
    total = global_units if global_units is not None else units
    model.train()
    loss_sum = margin_sum = 0.0
    trl_sum = torch.zeros(len(TRL_PAIR_KEYS), device=device)  # TRL's rewards/* and logps/* sums (pairwise)
    for mb in micro_batches:
        b, s = mb.to(device), gather_side(side, mb, device)
        with autocast(device):
            hidden, weight, bias = hidden_and_head(model, b.input_ids, b.position_ids)
            loss, logps = preference_loss(hidden, weight, b.labels, b.cu_seqlens, objective, bias=bias, impl=impl,
                                          return_logps=True, check_values=False, **s, **(head_options or {}))
        (loss * (mb.n_units * world / total)).backward()
        loss_sum += loss.detach() * mb.n_units
        lengths = response_lengths(b.labels, b.cu_seqlens) if objective.needs_lengths else None
        margin_sum += objective.margin(logps, s.get("ref_logps"), s.get("anchor_logps"), lengths=lengths).sum()
        if objective.pairwise:
            trl_sum += pair_metric_sums(objective, logps.detach(), s)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(mb.n_tokens for mb in micro_batches)
    # Σ s² of the step's sequences (the attention term of its FLOPs), kept a tensor: no host read here
    sum_sq_len = sum(mb.cu_seqlens.diff().double().square().sum() for mb in micro_batches)
    stop_requested = stop_requested() if callable(stop_requested) else stop_requested  # a signal during this step
    stats = torch.stack([torch.as_tensor(x, device=device, dtype=torch.float32).reshape(())
                         for x in (loss_sum, margin_sum, float(units), float(tokens), sum_sq_len, float(stop_requested))]
                        + list(trl_sum.unbind()))
    if world > 1:
        dist.all_reduce(stats)  # one collective for all the logged sums (and the stop flags)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
    stats = torch.cat([stats, grad_norm.detach().to(device=device, dtype=torch.float32).reshape(1)])
    loss_v, margin_v, units_v, tokens_v, sum_sq_v, stop_v, *trl_v, grad_norm_v = stats.tolist()  # the one host sync
    # The head's deferred label / cu_seqlens checks (CUDA, check_values=False) are complete after that sync: raise a
    # bad batch's error at this step, not one head call later (free: nothing is left to wait for).
    raise_pending_value_errors(wait=True)
    out = {"loss": loss_v / max(units_v, 1), "margin": margin_v / max(units_v, 1), "grad_norm": grad_norm_v,
           "lr": lr, "tokens": int(tokens_v), "sum_sq_len": sum_sq_v, "units": int(units_v),
           "stop": stop_v > 0}
    if objective.pairwise:
        out["trl"] = trl_metrics(trl_v, units_v)
    return out
