"""The one source of loss math (shared/ALGORITHMS.md).

Every objective is a small frozen dataclass with validated fields. It evaluates on plain
per-sequence log-probs, so the fused head, the pure-torch head, the trainer, the tabular games and
the tests all run the very same code.

Layout convention for pairwise objectives: sequences ``2i`` and ``2i+1`` of the last dimension are
pair ``i``'s chosen (preferred, y_w) and rejected (y_l) responses. All log-probs are **summed** over
the response tokens (no length normalisation).

``Δ_p = log p(y_w|x) − log p(y_l|x)`` for a policy ``p``.

=========  =====================================================  =========================
objective  per-example loss                                       needs
=========  =====================================================  =========================
INPO       (Δθ − r·Δref − (1−r)·Δanchor − 1/(2η))²                ref (r>0), anchor (r<1)
ONPO       (Δθ − Δanchor − η/2)²                                  anchor
IPO        (Δθ − Δref − 1/(2β))²                                  ref
DPO        −(1−ε)·logσ(β·h) − ε·logσ(−β·h),  h = Δθ − Δref        ref
SPPO       (logπθ(y) − logπ_t(y) − (P̂(y≻π_t) − ½)/η)²  per seq.   anchor (= π_t), targets
=========  =====================================================  =========================

The reduction is the mean over pairs (over sequences for SPPO).

Each objective also states itself as a :class:`KernelSpec` (``objective.kernel_spec()``): the constants with which
the fused Triton epilogue (``kernels/epilogue.py``) evaluates the same loss; ``tests/test_epilogue.py`` checks
the kernel against :meth:`Objective.__call__` for every objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Objective", "INPO", "ONPO", "IPO", "DPO", "SPPO", "OBJECTIVES", "KernelSpec", "make_objective"]


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_unit_interval(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")


def pair_margin(logps: Tensor) -> Tensor:
    """Δ = logp(chosen) − logp(rejected) for interleaved ``[..., 2P]`` log-probs → ``[..., P]``."""
    return logps[..., 0::2] - logps[..., 1::2]


LOSS_KINDS = ("squared", "logsigmoid")


@dataclass(frozen=True)
class KernelSpec:
    """An objective as the fused Triton epilogue (``kernels/epilogue.py``) evaluates it, derived from the objective's
    own fields by :meth:`Objective.kernel_spec` (tested against :meth:`Objective.__call__` for every objective).

    With Δ = chosen − rejected (``pairwise``) or the sequence's own value (per-sequence objectives)::

        u = Δθ − ref_coef·Δref − anchor_coef·Δanchor − offset − (target − target_center)/target_div
        z = scale·u
        "squared":    ℓ = z²
        "logsigmoid": ℓ = −(1 − label_smoothing)·logσ(z) − label_smoothing·logσ(−z)

    and the loss is the mean of ℓ over pairs (sequences). A term whose ``uses_*`` flag is False is not evaluated
    (its input may be absent), matching the objective's own code.
    """

    pairwise: bool
    loss: str
    uses_ref: bool = False
    uses_anchor: bool = False
    uses_targets: bool = False
    ref_coef: float = 0.0
    anchor_coef: float = 0.0
    offset: float = 0.0
    target_center: float = 0.0
    target_div: float = 1.0
    scale: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"KernelSpec.loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if self.uses_targets and self.target_div == 0:
            raise ValueError("KernelSpec.target_div must be non-zero when uses_targets")


@dataclass(frozen=True)
class Objective:
    """Base class. Subclasses set the class flags and implement :meth:`losses`."""

    name: ClassVar[str] = "objective"
    pairwise: ClassVar[bool] = True

    # -- which side inputs the objective needs (instance-dependent for INPO) --
    @property
    def needs_ref(self) -> bool:
        return False

    @property
    def needs_anchor(self) -> bool:
        return False

    @property
    def needs_targets(self) -> bool:
        return False

    def check_inputs(
        self,
        logps: Tensor,
        ref_logps: Tensor | None = None,
        anchor_logps: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the argument when an input this objective needs is missing or
        mis-shaped, or when a pairwise objective receives an odd number of sequences."""
        n = logps.shape[-1]
        if self.pairwise and n % 2 != 0:
            raise ValueError(
                f"{type(self).__name__} is pairwise: sequences 2i/2i+1 are pair i's chosen/rejected, "
                f"so the number of sequences must be even, got {n}"
            )
        for arg, value, needed in (
            ("ref_logps", ref_logps, self.needs_ref),
            ("anchor_logps", anchor_logps, self.needs_anchor),
            ("targets", targets, self.needs_targets),
        ):
            if needed and value is None:
                raise ValueError(f"{self!r} needs {arg} (one value per sequence), got None")
            if value is not None and tuple(value.shape) != tuple(logps.shape):
                raise ValueError(
                    f"{arg} must have the shape of the policy log-probs {tuple(logps.shape)}, "
                    f"got {tuple(value.shape)}"
                )

    def losses(
        self,
        logps: Tensor,
        ref_logps: Tensor | None = None,
        anchor_logps: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Unreduced losses: ``[..., P]`` per pair (``[..., S]`` per sequence for SPPO)."""
        raise NotImplementedError

    def margin(self, logps: Tensor, ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None) -> Tensor:
        """The quantity the loss regresses or classifies (h for INPO/IPO/DPO, g for ONPO)."""
        raise NotImplementedError

    def log_ratio(self, logps: Tensor, ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None) -> Tensor:
        """Per sequence ``[..., S]``: log π minus the log of the distribution the objective measures π against;
        :meth:`margin` is its chosen-minus-rejected difference (pairwise objectives)."""
        raise NotImplementedError

    @property
    def reward_scale(self) -> float:
        """β of TRL's implicit reward β·(log π − log π_ref): the factor that puts every IPO-style regression target
        at a reward margin of 1/2 (IPO: β; INPO: η, target 1/(2η); ONPO: 1/η, target η/2; SPPO: η)."""
        raise NotImplementedError

    def implicit_rewards(self, logps: Tensor, ref_logps: Tensor | None = None,
                         anchor_logps: Tensor | None = None) -> Tensor:
        """TRL's ``rewards/*`` per sequence: ``reward_scale · log_ratio`` (DPO/IPO: exactly TRL's β·(log π − log π_ref))."""
        return self.reward_scale * self.log_ratio(logps, ref_logps, anchor_logps)

    def kernel_spec(self) -> KernelSpec:
        """This objective's constants for the fused epilogue (see :class:`KernelSpec`)."""
        raise NotImplementedError(f"{type(self).__name__} has no fused-epilogue kernel spec")

    def __call__(
        self,
        logps: Tensor,
        ref_logps: Tensor | None = None,
        anchor_logps: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Mean loss (0-dim) over pairs (over sequences for SPPO)."""
        self.check_inputs(logps, ref_logps, anchor_logps, targets)
        return self.losses(logps, ref_logps, anchor_logps, targets).mean()


@dataclass(frozen=True)
class INPO(Objective):
    """Iterative Nash Policy Optimization. ``ratio`` = τ/η ∈ [0, 1].

    Minimised over all policies, the loss reproduces the mirror-descent update
    π_{t+1} ∝ π_ref^{τ/η} · π_t^{1−τ/η} · exp(P(y ≻ π_t)/η)  (the paper's Lemma 5).
    ``ratio=1`` is online IPO with β = η (π_t drops out); ``ratio=0`` is INPO without KL to π_ref.
    """

    eta: float = 0.0075
    ratio: float = 1.0 / 3.0
    name: ClassVar[str] = "inpo"

    def __post_init__(self) -> None:
        _check_positive("eta", self.eta)
        _check_unit_interval("ratio", self.ratio)

    @property
    def needs_ref(self) -> bool:
        return self.ratio > 0

    @property
    def needs_anchor(self) -> bool:
        return self.ratio < 1

    @property
    def reward_scale(self) -> float:
        return self.eta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        # against the geometric mix π_ref^(τ/η) · π_t^(1−τ/η) (normalisers cancel in the pair margin)
        r = logps
        if self.needs_ref:
            r = r - self.ratio * ref_logps
        if self.needs_anchor:
            r = r - (1.0 - self.ratio) * anchor_logps
        return r

    def margin(self, logps, ref_logps=None, anchor_logps=None):
        h = pair_margin(logps)
        if self.ratio > 0:
            h = h - self.ratio * pair_margin(ref_logps)
        if self.ratio < 1:
            h = h - (1.0 - self.ratio) * pair_margin(anchor_logps)
        return h

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
        return (self.margin(logps, ref_logps, anchor_logps) - 1.0 / (2.0 * self.eta)) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_ref=self.needs_ref, uses_anchor=self.needs_anchor,
                          ref_coef=self.ratio, anchor_coef=1.0 - self.ratio, offset=1.0 / (2.0 * self.eta))


@dataclass(frozen=True)
class ONPO(Objective):
    """Optimistic Nash Policy Optimization: one of its two regressions, (Δθ − Δanchor − η/2)².

    Note η multiplies here (target η/2) where INPO divides (target 1/(2η)). The anchor is π'_t for
    the auxiliary chain's fit and π'_{t+1} for the main chain's fit.
    """

    eta: float = 1.0
    name: ClassVar[str] = "onpo"

    def __post_init__(self) -> None:
        _check_positive("eta", self.eta)

    @property
    def needs_anchor(self) -> bool:
        return True

    @property
    def reward_scale(self) -> float:
        return 1.0 / self.eta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        return logps - anchor_logps

    def margin(self, logps, ref_logps=None, anchor_logps=None):
        return pair_margin(logps) - pair_margin(anchor_logps)

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
        return (self.margin(logps, ref_logps, anchor_logps) - self.eta / 2.0) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_anchor=True, anchor_coef=1.0, offset=self.eta / 2.0)


@dataclass(frozen=True)
class _ReferenceMargin(Objective):
    """Shared by IPO and DPO: h = Δθ − Δref, with strength β."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        _check_positive("beta", self.beta)

    @property
    def needs_ref(self) -> bool:
        return True

    @property
    def reward_scale(self) -> float:
        return self.beta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        return logps - ref_logps

    def margin(self, logps, ref_logps=None, anchor_logps=None):
        return pair_margin(logps) - pair_margin(ref_logps)


@dataclass(frozen=True)
class IPO(_ReferenceMargin):
    """Identity Preference Optimization on summed log-probs: (Δθ − Δref − 1/(2β))²."""

    name: ClassVar[str] = "ipo"

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
        return (self.margin(logps, ref_logps) - 1.0 / (2.0 * self.beta)) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_ref=True, ref_coef=1.0, offset=1.0 / (2.0 * self.beta))


@dataclass(frozen=True)
class DPO(_ReferenceMargin):
    """Direct Preference Optimization with optional label smoothing ε (conservative DPO)."""

    label_smoothing: float = 0.0
    name: ClassVar[str] = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float))
                or not 0.0 <= self.label_smoothing <= 0.5):
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing!r}")

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
        z = self.beta * self.margin(logps, ref_logps)
        eps = self.label_smoothing
        loss = -F.logsigmoid(z)
        if eps > 0:
            loss = (1.0 - eps) * loss - eps * F.logsigmoid(-z)
        return loss

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="logsigmoid", uses_ref=True, ref_coef=1.0, scale=self.beta,
                          label_smoothing=self.label_smoothing)


@dataclass(frozen=True)
class SPPO(Objective):
    """Self-Play Preference Optimization, per sequence:
    (log πθ(y) − log π_t(y) − (P̂(y ≻ π_t) − ½)/η)², with ``anchor_logps`` = π_t and ``targets`` = P̂."""

    eta: float = 1e-3
    name: ClassVar[str] = "sppo"
    pairwise: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_positive("eta", self.eta)

    @property
    def needs_anchor(self) -> bool:
        return True

    @property
    def needs_targets(self) -> bool:
        return True

    @property
    def reward_scale(self) -> float:
        return self.eta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        return logps - anchor_logps

    def check_inputs(self, logps, ref_logps=None, anchor_logps=None, targets=None) -> None:
        """Also: ``targets`` (win-rate estimates P̂) in [0, 1]. Checked here for CPU tensors (no device to sync
        with); ``inpo.ops.preference_loss`` checks CUDA targets on the device without a host sync."""
        super().check_inputs(logps, ref_logps, anchor_logps, targets)
        if targets is None or targets.device.type != "cpu" or torch.compiler.is_compiling():
            return
        bad = ~((targets >= 0) & (targets <= 1))  # NaN is out of range too
        if bad.any():
            i = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(f"targets must be in [0, 1] (win-rate estimates), got {targets.reshape(-1)[i].item()} "
                             f"at index {i}")

    def margin(self, logps, ref_logps=None, anchor_logps=None):
        return logps - anchor_logps

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
        return (self.margin(logps, anchor_logps=anchor_logps) - (targets - 0.5) / self.eta) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=False, loss="squared", uses_anchor=True, uses_targets=True, anchor_coef=1.0,
                          target_center=0.5, target_div=self.eta)


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (INPO, ONPO, IPO, DPO, SPPO)}


def make_objective(name: str, **params: float) -> Objective:
    """Build an objective by name (``"inpo"``, ``"onpo"``, ``"ipo"``, ``"dpo"``, ``"sppo"``)."""
    key = name.lower()
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[key](**params)
