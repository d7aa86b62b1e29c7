"""AdamW (fused where the device supports it) and the learning-rate schedules.

``linear``, ``cosine`` (with an optional floor, HF's ``cosine_with_min_lr``), ``constant`` and
``constant_with_warmup`` are transformers' schedules, formula for formula (warm-up from 0: lr·s/w), so a TRL
recipe gets the same learning rate at every step. ``inpo_cosine`` is the embedded task's tuned schedule: warm-up
from lr/(w+1) (lr·(s+1)/(w+1)), then cosine to ``min_lr_ratio``·lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["make_optimizer", "lr_schedule", "cosine_schedule", "warmup_steps_of", "LrLambda", "SCHEDULES"]

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "inpo_cosine")


def make_optimizer(model, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8):
    """torch AdamW; ``fused=True`` on CUDA (one kernel for all parameters). On CPU the default foreach
    path: deterministic, so resumed runs match uninterrupted ones bit for bit."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    fused = params[0].device.type == "cuda"
    # No weight decay on norms/biases (1-D tensors), the usual split.
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


@dataclass
class LrLambda:
    """lr multiplier at optimiser step ``step`` (0-based) of a ``total``-step phase with ``warmup`` warm-up steps.
    A dataclass (not a lambda) so the scheduler's state_dict is plain data."""

    kind: str
    total: int
    warmup: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if self.kind == "inpo_cosine":
            if step < self.warmup:
                return (step + 1) / (self.warmup + 1)
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "constant":
            return 1.0
        if step < self.warmup:  # transformers' warm-up: from 0
            return float(step) / float(max(1, self.warmup))
        if self.kind == "constant_with_warmup":
            return 1.0
        if self.kind == "linear":
            factor = max(0.0, float(self.total - step) / float(max(1, self.total - self.warmup)))
        else:  # cosine
            progress = float(step - self.warmup) / float(max(1, self.total - self.warmup))
            factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return factor if self.min_ratio == 0 else factor * (1 - self.min_ratio) + self.min_ratio


def warmup_steps_of(total_steps: int, *, warmup_ratio: float = 0.0, warmup_steps: int | None = None) -> int:
    """transformers' rule: ``warmup_steps`` when given, else ceil(warmup_ratio × total_steps)."""
    return int(warmup_steps) if warmup_steps is not None else math.ceil(warmup_ratio * total_steps)


def lr_schedule(optimizer, *, kind: str, total_steps: int, warmup: int = 0, min_lr_ratio: float = 0.0):
    """LambdaLR with :class:`LrLambda` (``kind`` one of :data:`SCHEDULES`)."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LrLambda(kind, total_steps, warmup, min_lr_ratio))


def cosine_schedule(optimizer, *, total_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0):
    """The embedded task's ``inpo_cosine``; warm-up = ceil(warmup_ratio × total_steps) steps."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return lr_schedule(optimizer, kind="inpo_cosine", total_steps=total_steps,
                       warmup=warmup_steps_of(total_steps, warmup_ratio=warmup_ratio), min_lr_ratio=min_lr_ratio)
