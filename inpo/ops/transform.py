"""What some models do to the logits after the LM head's GEMM, and its derivative: the one definition.

Several transformers families do not feed ``hidden @ weight.T + bias`` to the softmax. Between the last hidden
state and the logits they apply, in this order (``inpo.train.model.head_inputs`` reads which from the model):

    raw = hidden @ weight.T + bias
    u   = logit_scale · raw                 Cohere ``logit_scale``, Granite ``1 / logits_scaling``, Falcon-H1
                                            ``lm_head_multiplier``, ...
    z   = softcap · tanh(u / softcap)       Gemma-2/3 ``final_logit_softcapping`` (when ``softcap`` is not None)

and log-probs are ``log_softmax(z)``. Every head impl applies this to each logits tile before its log-sum-exp and
chains its derivative into the backward:

    dz/draw = logit_scale · (1 − tanh²(u / softcap))     (= logit_scale without a cap)

so ``d logp / d raw = dz/draw · (onehot(label) − softmax(z))`` and dBias is the sum of that over tokens. A bias
is inside the scale and the cap, as in ``lm_head(hidden) * scale``. A ``-inf`` bias (a masked token) stays
``-inf`` without a cap and becomes ``-softcap`` with one (``tanh(-inf) = -1``), as transformers computes it.

This module holds the parameters (:class:`LogitTransform`, checked once) and the torch forms used by the naive
reference (differentiable) and the chunked torch path (explicit derivative); the Triton kernels
(``kernels/head.py``) and the native op (``csrc/fused_head.cpp``) implement the same two formulas, tested against
these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _positive_finite(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 ({what}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LogitTransform:
    """``logit_scale`` multiplies the raw logits, then ``softcap`` (None = off) caps them: see the module docstring.

    Frozen and hashable: passed through autograd Functions and used as a cache key."""

    logit_scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "logit_scale", _positive_finite(
            "logit_scale", self.logit_scale, "the multiplier of the raw logits; 1.0 = none"))
        if self.softcap is not None:
            object.__setattr__(self, "softcap", _positive_finite(
                "softcap", self.softcap, "the cap c of c·tanh(logits / c); None = no cap"))

    @property
    def identity(self) -> bool:
        """True when the logits are the raw GEMM output (the usual LM head)."""
        return self.logit_scale == 1.0 and self.softcap is None

    def apply(self, raw: Tensor) -> Tensor:
        """The transformed logits, differentiable by autograd (the naive reference)."""
        z = raw if self.logit_scale == 1.0 else raw * self.logit_scale
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def apply_(self, raw: Tensor) -> Tensor:
        """:meth:`apply` in place on a tile the caller owns (the torch path's forward): no extra [tile] buffers."""
        if self.logit_scale != 1.0:
            raw.mul_(self.logit_scale)
        if self.softcap is not None:
            raw.div_(self.softcap).tanh_().mul_(self.softcap)
        return raw

    def apply_with_grad_(self, raw: Tensor) -> tuple[Tensor, Tensor | float]:
        """(transformed logits, in place of ``raw``; their derivative w.r.t. ``raw``) for an explicit backward.

        The derivative of the cap is sech²(u/c) = 1/cosh², accurate where tanh saturates (1 − tanh² would cancel);
        cosh overflows to inf for |u/c| > 89, giving the exact 0. Without a cap it is the Python float scale."""
        if self.logit_scale != 1.0:
            raw.mul_(self.logit_scale)
        if self.softcap is None:
            return raw, self.logit_scale
        y = raw.div_(self.softcap)
        d = torch.cosh(y).reciprocal_().square_()
        if self.logit_scale != 1.0:
            d.mul_(self.logit_scale)
        return y.tanh_().mul_(self.softcap), d


IDENTITY = LogitTransform()


def logit_transform(softcap=None, logit_scale=1.0) -> LogitTransform:
    """The checked :class:`LogitTransform` of the public arguments (ValueError naming a bad one)."""
    if softcap is None and logit_scale == 1.0 and not isinstance(logit_scale, bool):
        return IDENTITY
    return LogitTransform(logit_scale=logit_scale, softcap=softcap)
