"""The one source of loss math (shared/ALGORITHMS.md), and what each objective needs from the training loop.

Every objective is a small frozen dataclass with validated fields. It evaluates on plain
per-sequence log-probs, so the fused head, the pure-torch head, the trainer, the tabular games and
the tests all run the very same code.

Layout convention for pairwise objectives: sequences ``2i`` and ``2i+1`` of the last dimension are
pair ``i``'s chosen (preferred, y_w) and rejected (y_l) responses. All log-probs are **summed** over
the response tokens; an objective with ``length_normalize=True`` divides each sequence's log-ratio by its
number of response tokens (``lengths``, clamped at 1) before taking the chosen-minus-rejected difference, as
TRL 1.16's ``ipo`` and ``sigmoid_norm`` losses do.

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

**What an objective declares for the loop** (so nothing outside this module tests an objective's name):

* its parameters and their defaults: the dataclass fields (defaults for a user's model: TRL's / the papers'),
  :attr:`Objective.task_defaults` (tuned for the embedded default task) and :attr:`Objective.default_lr`;
* which cached log-prob sources it reads (:data:`SOURCES`: ``"ref"`` = π_ref, ``"iterate"`` = the previous
  iterate π_t, ``"aux"`` = an auxiliary chain π'_t): :attr:`Objective.ref_source` /
  :attr:`Objective.anchor_source`, hence :attr:`Objective.sources` and :meth:`Objective.side_inputs`;
* what the loop must sample: :attr:`Objective.samples` (``"pairs"``: a chosen/rejected pair per prompt;
  ``"scored"``: K responses per prompt with win-rate targets) and :attr:`Objective.aux_chain` (a second model
  trained every iteration, ONPO);
* :meth:`Objective.kernel_spec`: the constants with which the fused Triton epilogue (``kernels/epilogue.py``)
  evaluates the same loss, or None -- then every head impl computes the log-probs and the Python loss runs on
  them. ``tests/test_epilogue.py`` checks the kernel against :meth:`Objective.__call__` for every objective.

A new objective is a subclass registered with :func:`register_objective` (``tests/test_objective_registry.py``
trains one defined in the test file alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Objective", "INPO", "ONPO", "IPO", "DPO", "SPPO", "OBJECTIVES", "KernelSpec", "make_objective",
           "register_objective", "objective_class", "SOURCES", "SAMPLE_KINDS"]

SOURCES = ("ref", "iterate", "aux")  # the log-prob caches the loop can precompute
SAMPLE_KINDS = ("pairs", "scored")  # what the loop samples and ranks for an objective


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_unit_interval(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def pair_margin(logps: Tensor) -> Tensor:
    """Δ = logp(chosen) − logp(rejected) for interleaved ``[..., 2P]`` log-probs → ``[..., P]``."""
    return logps[..., 0::2] - logps[..., 1::2]


def per_token(values: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence's value divided by its number of response tokens, clamped at 1 (TRL's ``.clamp(min=1)``)."""
    return values / lengths.to(values.dtype).clamp(min=1.0)


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

    With ``length_normalize`` each sequence's ``θ − ref_coef·ref − anchor_coef·anchor`` is divided by its number
    of response tokens (clamped at 1) before Δ is taken. The loss is the mean of ℓ over pairs (sequences). A
    term whose ``uses_*`` flag is False is not evaluated (its input may be absent), matching the objective's code.
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
    length_normalize: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"KernelSpec.loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if self.uses_targets and self.target_div == 0:
            raise ValueError("KernelSpec.target_div must be non-zero when uses_targets")


@dataclass(frozen=True)
class Objective:
    """Base class. Subclasses set the class declarations below and implement :meth:`losses`, :meth:`margin` and
    :meth:`log_ratio` (and :attr:`reward_scale`, :meth:`kernel_spec` where they have them)."""

    name: ClassVar[str] = "objective"
    pairwise: ClassVar[bool] = True  # sequences 2i/2i+1 form pair i (else one loss term per sequence)
    samples: ClassVar[str] = "pairs"  # SAMPLE_KINDS: what the loop samples and ranks
    aux_chain: ClassVar[bool] = False  # the loop also trains an auxiliary chain π' (side input source "aux")
    ref_source: ClassVar[str | None] = None  # the SOURCES entry passed as ref_logps (when needs_ref)
    anchor_source: ClassVar[str | None] = None  # the SOURCES entry passed as anchor_logps (when needs_anchor)
    task_defaults: ClassVar[dict] = {}  # parameter values tuned for the embedded default task
    default_lr: ClassVar[float] = 5e-7  # learning rate with a user's model (the objective's paper / TRL)

    # -- parameters ------------------------------------------------------------------------------------
    @classmethod
    def parameters(cls) -> dict:
        """``{name: default}`` of this objective's parameters (the defaults for a user's model)."""
        return {f.name: f.default for f in fields(cls)}

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

    @property
    def needs_lengths(self) -> bool:
        """Whether the loss divides by the response lengths (the head counts them from the labels)."""
        return False

    # -- what the loop precomputes and passes -------------------------------------------------------------
    @property
    def sources(self) -> frozenset:
        """The cached log-prob sources (:data:`SOURCES`) this objective reads."""
        used = ((self.ref_source, self.needs_ref), (self.anchor_source, self.needs_anchor))
        return frozenset(src for src, needed in used if needed)

    def side_inputs(self, logps: dict, data: list[dict]) -> dict:
        """``ref_logps`` / ``anchor_logps`` / ``targets`` for :func:`inpo.ops.preference_loss` from the loop's cached
        log-probs ``{source: [S] tensor}`` and its records (a scored sample's ``"target"`` is its win rate)."""
        side: dict = {}
        for key, src, needed in (("ref_logps", self.ref_source, self.needs_ref),
                                 ("anchor_logps", self.anchor_source, self.needs_anchor)):
            if needed:
                if src not in logps:
                    raise KeyError(f"{self!r} reads the {src!r} log-probs as {key}; the loop passed "
                                   f"{sorted(logps)}")
                side[key] = logps[src]
        if self.needs_targets:
            side["targets"] = torch.tensor([float(r["target"]) for r in data], dtype=torch.float32)
        return side

    def check_inputs(
        self,
        logps: Tensor,
        ref_logps: Tensor | None = None,
        anchor_logps: Tensor | None = None,
        targets: Tensor | None = None,
        lengths: Tensor | None = None,
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
            ("lengths", lengths, self.needs_lengths),
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
        lengths: Tensor | None = None,
    ) -> Tensor:
        """Unreduced losses: ``[..., P]`` per pair (``[..., S]`` per sequence for SPPO)."""
        raise NotImplementedError

    def margin(self, logps: Tensor, ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None,
               lengths: Tensor | None = None) -> Tensor:
        """The quantity the loss regresses or classifies (h for INPO/IPO/DPO, g for ONPO)."""
        raise NotImplementedError

    def log_ratio(self, logps: Tensor, ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None) -> Tensor:
        """Per sequence ``[..., S]``: log π minus the log of the distribution the objective measures π against;
        :meth:`margin` is its chosen-minus-rejected difference (pairwise objectives without length normalisation)."""
        raise NotImplementedError

    @property
    def reward_scale(self) -> float:
        """β of TRL's implicit reward β·(log π − log π_ref): the factor that puts every IPO-style regression target
        at a reward margin of 1/2 (IPO: β; INPO: η, target 1/(2η); ONPO: 1/η, target η/2; SPPO: η)."""
        raise NotImplementedError

    def implicit_rewards(self, logps: Tensor, ref_logps: Tensor | None = None,
                         anchor_logps: Tensor | None = None) -> Tensor:
        """TRL's ``rewards/*`` per sequence: ``reward_scale · log_ratio`` (DPO/IPO: exactly TRL's β·(log π − log π_ref),
        summed log-probs also under length normalisation, as TRL logs them)."""
        return self.reward_scale * self.log_ratio(logps, ref_logps, anchor_logps)

    def kernel_spec(self) -> KernelSpec | None:
        """This objective's constants for the fused epilogue (see :class:`KernelSpec`), or None: then the head
        computes the log-probs and :meth:`__call__` the loss (on every impl, Triton included)."""
        return None

    def __call__(
        self,
        logps: Tensor,
        ref_logps: Tensor | None = None,
        anchor_logps: Tensor | None = None,
        targets: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """Mean loss (0-dim) over pairs (over sequences for SPPO)."""
        self.check_inputs(logps, ref_logps, anchor_logps, targets, lengths)
        extra = {} if lengths is None else {"lengths": lengths}  # objectives that never normalise need not take it
        return self.losses(logps, ref_logps, anchor_logps, targets, **extra).mean()


# -- the registry -------------------------------------------------------------------------------------------------

OBJECTIVES: dict[str, type[Objective]] = {}


def _check_declarations(cls: type[Objective]) -> None:
    """The class declarations the loop relies on (samples, sources, task defaults)."""
    if cls.samples not in SAMPLE_KINDS:
        raise ValueError(f"{cls.__name__}.samples must be one of {SAMPLE_KINDS}, got {cls.samples!r}")
    if cls.pairwise != (cls.samples == "pairs"):  # the loop packs what it samples: pairs 2i/2i+1, or sequences
        raise ValueError(f"{cls.__name__}: pairwise={cls.pairwise} with samples={cls.samples!r}; the loop feeds "
                         f"pairs to pairwise objectives and scored samples to per-sequence ones")
    for attr in ("ref_source", "anchor_source"):
        if getattr(cls, attr) not in (None, *SOURCES):
            raise ValueError(f"{cls.__name__}.{attr} must be None or one of {SOURCES}, got {getattr(cls, attr)!r}")
    unknown = set(cls.task_defaults) - set(cls.parameters())
    if unknown:
        raise ValueError(f"{cls.__name__}.task_defaults names {sorted(unknown)}, which are not its parameters "
                         f"{sorted(cls.parameters())}")


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Make ``cls`` available by its ``name`` (config ``objective:``, :func:`make_objective`); usable as a class
    decorator. Checks the declarations the loop relies on."""
    if not (isinstance(cls, type) and issubclass(cls, Objective) and is_dataclass(cls)):
        raise TypeError(f"register_objective needs a dataclass subclass of Objective, got {cls!r}")
    name = cls.name
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower()) or name == Objective.name:
        raise ValueError(f"{cls.__name__}.name must be a lower-case identifier of its own, got {name!r}")
    if name in OBJECTIVES and OBJECTIVES[name] is not cls:
        raise ValueError(f"objective {name!r} is already registered ({OBJECTIVES[name].__name__})")
    _check_declarations(cls)
    OBJECTIVES[name] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    """The registered objective class called ``name`` (case-insensitive), or a ValueError listing the names."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[key]


def make_objective(name: str, **params) -> Objective:
    """Build an objective by name (``"inpo"``, ``"onpo"``, ``"ipo"``, ``"dpo"``, ``"sppo"``, or a registered one);
    a parameter it does not take is a ValueError naming the objective and the parameters it does take."""
    cls = objective_class(name)
    unknown = sorted(set(params) - set(cls.parameters()))
    if unknown:
        raise ValueError(f"objective {cls.name!r} does not use {', '.join(unknown)}; it takes "
                         f"{', '.join(cls.parameters()) or 'no parameters'}")
    return cls(**params)


# -- the objectives -----------------------------------------------------------------------------------------------

@register_objective
@dataclass(frozen=True)
class INPO(Objective):
    """Iterative Nash Policy Optimization. ``ratio`` = τ/η ∈ [0, 1].

    Minimised over all policies, the loss reproduces the mirror-descent update
    π_{t+1} ∝ π_ref^{τ/η} · π_t^{1−τ/η} · exp(P(y ≻ π_t)/η)  (the paper's Lemma 5).
    ``ratio=1`` is online IPO with β = η (π_t drops out); ``ratio=0`` is INPO without KL to π_ref.
    Defaults: the INPO authors' code (η = 0.0075, τ/η = 1/3); the embedded task's η = 0.25 aims at a target
    margin 1/(2η) of a few nats for its ~15-token responses (the paper's 1/(2·0.005) = 100 nats are spread over
    ~300 tokens of an 8B model).
    """

    eta: float = 0.0075
    ratio: float = 1.0 / 3.0
    name: ClassVar[str] = "inpo"
    ref_source: ClassVar[str] = "ref"
    anchor_source: ClassVar[str] = "iterate"
    task_defaults: ClassVar[dict] = {"eta": 0.25, "ratio": 1.0 / 3.0}

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

    def margin(self, logps, ref_logps=None, anchor_logps=None, lengths=None):
        h = pair_margin(logps)
        if self.ratio > 0:
            h = h - self.ratio * pair_margin(ref_logps)
        if self.ratio < 1:
            h = h - (1.0 - self.ratio) * pair_margin(anchor_logps)
        return h

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        return (self.margin(logps, ref_logps, anchor_logps) - 1.0 / (2.0 * self.eta)) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_ref=self.needs_ref, uses_anchor=self.needs_anchor,
                          ref_coef=self.ratio, anchor_coef=1.0 - self.ratio, offset=1.0 / (2.0 * self.eta))


@register_objective
@dataclass(frozen=True)
class ONPO(Objective):
    """Optimistic Nash Policy Optimization: one of its two regressions, (Δθ − Δanchor − η/2)².

    Note η multiplies here (target η/2) where INPO divides (target 1/(2η)). The anchor is π'_t for
    the auxiliary chain's fit and π'_{t+1} for the main chain's fit (the loop's ``"aux"`` source, its
    :attr:`aux_chain`). Default η = 1/0.0075: the target margin of the INPO authors' η.
    """

    eta: float = 1.0 / 0.0075
    name: ClassVar[str] = "onpo"
    aux_chain: ClassVar[bool] = True
    anchor_source: ClassVar[str] = "aux"
    task_defaults: ClassVar[dict] = {"eta": 4.0}

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

    def margin(self, logps, ref_logps=None, anchor_logps=None, lengths=None):
        return pair_margin(logps) - pair_margin(anchor_logps)

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        return (self.margin(logps, ref_logps, anchor_logps) - self.eta / 2.0) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_anchor=True, anchor_coef=1.0, offset=self.eta / 2.0)


@dataclass(frozen=True, repr=False)
class _ReferenceMargin(Objective):
    """Shared by IPO and DPO: h = Δθ − Δref, with strength β; ``length_normalize`` divides each sequence's
    log-ratio by its response length first (TRL 1.16's ``ipo`` / ``sigmoid_norm``)."""

    beta: float = 0.1
    default_lr: ClassVar[float] = 1e-6  # TRL DPOConfig's
    # subclasses declare ``length_normalize: bool = False`` after their own fields (keeps positional order)

    def __post_init__(self) -> None:
        _check_positive("beta", self.beta)
        _check_bool("length_normalize", self.length_normalize)

    @property
    def needs_ref(self) -> bool:
        return True

    @property
    def needs_lengths(self) -> bool:
        return self.length_normalize

    @property
    def reward_scale(self) -> float:
        return self.beta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        return logps - ref_logps

    def __repr__(self) -> str:
        # length_normalize shown only when on: the summed forms keep the repr runs have recorded
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name != "length_normalize" or self.length_normalize]
        return f"{type(self).__name__}({', '.join(shown)})"

    def margin(self, logps, ref_logps=None, anchor_logps=None, lengths=None):
        if self.length_normalize:  # TRL's order: (log π − log π_ref) / length per sequence, then the difference
            return pair_margin(per_token(logps - ref_logps, lengths))
        return pair_margin(logps) - pair_margin(ref_logps)


@register_objective
@dataclass(frozen=True, repr=False)
class IPO(_ReferenceMargin):
    """Identity Preference Optimization: (h − 1/(2β))². On summed log-probs by default; ``length_normalize=True``
    is TRL 1.16's ``loss_type="ipo"`` (each log-ratio divided by its completion length: a per-token IPO)."""

    length_normalize: bool = False
    name: ClassVar[str] = "ipo"
    ref_source: ClassVar[str] = "ref"
    task_defaults: ClassVar[dict] = {"beta": 0.25}

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        return (self.margin(logps, ref_logps, lengths=lengths) - 1.0 / (2.0 * self.beta)) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="squared", uses_ref=True, ref_coef=1.0, offset=1.0 / (2.0 * self.beta),
                          length_normalize=self.length_normalize)


@register_objective
@dataclass(frozen=True, repr=False)
class DPO(_ReferenceMargin):
    """Direct Preference Optimization with optional label smoothing ε (conservative DPO). Online its reference is
    the previous iterate π_t (iterative DPO; offline π_t = π_ref). ``length_normalize=True`` is TRL's
    ``sigmoid_norm``."""

    label_smoothing: float = 0.0
    length_normalize: bool = False
    name: ClassVar[str] = "dpo"
    ref_source: ClassVar[str] = "iterate"
    task_defaults: ClassVar[dict] = {"beta": 0.5, "label_smoothing": 0.0}

    def __post_init__(self) -> None:
        super().__post_init__()
        if (isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float))
                or not 0.0 <= self.label_smoothing <= 0.5):
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing!r}")

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        z = self.beta * self.margin(logps, ref_logps, lengths=lengths)
        eps = self.label_smoothing
        loss = -F.logsigmoid(z)
        if eps > 0:
            loss = (1.0 - eps) * loss - eps * F.logsigmoid(-z)
        return loss

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="logsigmoid", uses_ref=True, ref_coef=1.0, scale=self.beta,
                          label_smoothing=self.label_smoothing, length_normalize=self.length_normalize)


@register_objective
@dataclass(frozen=True)
class SPPO(Objective):
    """Self-Play Preference Optimization, per sequence:
    (log πθ(y) − log π_t(y) − (P̂(y ≻ π_t) − ½)/η)², with ``anchor_logps`` = π_t and ``targets`` = P̂.
    Default η = 1e-3: the SPPO paper's 1e3 is our 1/η."""

    eta: float = 1e-3
    name: ClassVar[str] = "sppo"
    pairwise: ClassVar[bool] = False
    samples: ClassVar[str] = "scored"
    anchor_source: ClassVar[str] = "iterate"
    task_defaults: ClassVar[dict] = {"eta": 0.25}

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

    def check_inputs(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None) -> None:
        """Also: ``targets`` (win-rate estimates P̂) in [0, 1]. Checked here for CPU tensors (no device to sync
        with); ``inpo.ops.preference_loss`` checks CUDA targets on the device without a host sync."""
        super().check_inputs(logps, ref_logps, anchor_logps, targets, lengths)
        if targets is None or targets.device.type != "cpu" or torch.compiler.is_compiling():
            return
        bad = ~((targets >= 0) & (targets <= 1))  # NaN is out of range too
        if bad.any():
            i = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(f"targets must be in [0, 1] (win-rate estimates), got {targets.reshape(-1)[i].item()} "
                             f"at index {i}")

    def margin(self, logps, ref_logps=None, anchor_logps=None, lengths=None):
        return logps - anchor_logps

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        return (self.margin(logps, anchor_logps=anchor_logps) - (targets - 0.5) / self.eta) ** 2

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=False, loss="squared", uses_anchor=True, uses_targets=True, anchor_coef=1.0,
                          target_center=0.5, target_div=self.eta)
