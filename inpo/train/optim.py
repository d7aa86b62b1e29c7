"""AdamW (fused where the device supports it) and a cosine schedule with linear warm-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["make_optimizer", "cosine_schedule", "CosineWithWarmup"]


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
class CosineWithWarmup:
    """lr multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``.
    A dataclass (not a lambda) so the scheduler's state_dict is plain data."""

    total: int
    warmup: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer, *, total_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0):
    """LambdaLR with :class:`CosineWithWarmup`; warm-up = ceil(warmup_ratio × total_steps) steps."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = math.ceil(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(total_steps, warmup, min_lr_ratio))
