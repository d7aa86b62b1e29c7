"""Public entry points of the fused head: ``sequence_logps`` and ``preference_loss``.

Argument checks and ``impl`` dispatch live here; each implementation module exposes
``sequence_logps(hidden, weight, labels, cu_seqlens, bias, *, ignore_index)``. The objective's loss math
comes from :mod:`inpo.objectives` (the one source), applied to the [S] per-sequence log-probs.
"""

from __future__ import annotations

import importlib
import sys

import torch
from torch import Tensor

from inpo.objectives import Objective
from inpo.ops.checks import (check_grad_filter, check_head_inputs, check_impl, check_side_input,
                             check_unit_interval, resolve_deterministic)

_IMPL_MODULES = {
    "naive": "inpo.ops.naive",
    "torch": "inpo.ops.torch_impl",
    "triton": "inpo.ops.triton_impl",
    "native": "inpo.ops.native_impl",
}


def _import(name: str):
    # sys.modules first: torch.compile (dynamo) cannot trace importlib, but traces a dict lookup.
    return sys.modules.get(name) or importlib.import_module(name)


def native_available() -> bool:
    """True when the C++ CPU head (csrc/) is built or can be built here."""
    try:
        mod = _import("inpo.ops.native_impl")
    except ImportError:
        return False
    return bool(getattr(mod, "is_available", lambda: False)())


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` = triton on CUDA; on CPU the native C++ head when it is available, else pure torch."""
    check_impl(impl)
    if impl != "auto":
        return impl
    if device.type == "cuda":
        return "triton"
    return "native" if native_available() else "torch"


def _impl_fn(impl: str):
    mod = _import(_IMPL_MODULES[impl])
    return mod.sequence_logps_naive if impl == "naive" else mod.sequence_logps


def _exactness_options(impl: str, grad_filter, deterministic) -> dict:
    """The keyword arguments each impl takes for ``grad_filter`` / ``deterministic`` (checked here, once).

    Only the Triton atomic backward filters; every other path computes exact gradients whatever ``grad_filter``
    says (its bound then holds with zero error). The native op has no atomics (fixed partitions per thread count)
    and takes neither.
    """
    grad_filter = check_grad_filter(grad_filter)
    deterministic = resolve_deterministic(deterministic)
    if impl == "native":
        return {}
    if impl == "triton":
        return dict(grad_filter=grad_filter, deterministic=deterministic)
    return dict(deterministic=deterministic)


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, *,
                   bias: Tensor | None = None, ignore_index: int = -100, impl: str = "auto",
                   check_values: bool = True, grad_filter: float | None = None,
                   deterministic: bool | None = None) -> Tensor:
    """Summed response log-probs per packed sequence, without materialising [N, V] logits.

    Args:
        hidden: [N, H] last hidden states of the packed tokens.
        weight: [V, H] LM-head weight (``nn.Linear`` layout); same dtype and device as ``hidden``.
        labels: [N] int64, already shifted: ``labels[i]`` is the token ``hidden[i]`` predicts;
            ``ignore_index`` for prompt and padding tokens.
        cu_seqlens: [S+1] int32 sequence boundaries, from 0 to N.
        bias: optional [V] LM-head bias.
        impl: ``"triton"`` | ``"torch"`` | ``"naive"`` | ``"native"`` | ``"auto"``.
        check_values: label range and cu_seqlens boundaries are checked on every call; ``True`` raises at once
            (one host sync on CUDA), ``False`` keeps CUDA calls sync-free and raises the ValueError at a later
            call once the device has finished this one (or at :func:`inpo.ops.raise_pending_value_errors`).
        grad_filter: ``None`` (default) = exact gradients on every impl and dtype. A float ``b`` in (0, 1) lets
            the Triton atomic backward skip a [BLOCK_N, BLOCK_V] tile's two gradient GEMMs when every row's
            softmax mass in it is at most ``b / (number of vocabulary tiles)`` and it holds no target: each
            token then loses at most ``b`` of softmax mass in all (README "Gradient filter (opt-in)"). Other
            impls (and the deterministic backward) ignore it: their gradients are exact.
        deterministic: ``None`` (default) = follow ``torch.are_deterministic_algorithms_enabled()``; ``True``
            selects a backward with a fixed reduction order (Triton: the chunked backward, no atomics) and an
            order-fixed per-sequence sum, so two runs are bitwise equal; ``False`` the fastest backward.

    Returns:
        [S] fp32 (fp64 for fp64 inputs under ``naive``): each sequence's summed token log-probs,
        0 for a sequence whose labels are all ignored. Differentiable w.r.t. hidden, weight, bias.
    """
    check_head_inputs(hidden, weight, labels, cu_seqlens, bias, ignore_index=ignore_index, check_values=check_values)
    impl = resolve_impl(impl, hidden.device)
    options = _exactness_options(impl, grad_filter, deterministic)
    return _impl_fn(impl)(hidden, weight, labels, cu_seqlens, bias, ignore_index=ignore_index, **options)


def preference_loss(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, objective: Objective, *,
                    ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None,
                    targets: Tensor | None = None, bias: Tensor | None = None, ignore_index: int = -100,
                    impl: str = "auto", return_logps: bool = False, check_values: bool = True,
                    grad_filter: float | None = None, deterministic: bool | None = None):
    """Mean preference loss over pairs (sequences 2i / 2i+1 = pair i's chosen / rejected).

    ``ref_logps`` = π_ref's [S] log-probs, ``anchor_logps`` = π_t's (π'_t for ONPO), ``targets`` = SPPO's
    per-sequence win-rate estimates. ``grad_filter`` and ``deterministic`` as in :func:`sequence_logps`.
    With ``impl="triton"`` an objective with a kernel spec runs in the fused epilogue; one without
    (``kernel_spec()`` None) gets the Triton head's log-probs and its Python loss, as every other impl does.
    Returns a 0-dim loss, or ``(loss, logps.detach())`` with ``return_logps=True``.
    """
    if not isinstance(objective, Objective):
        raise TypeError(
            f"objective must be an inpo.objectives.Objective (INPO, ONPO, IPO, DPO, SPPO), got {type(objective).__name__}"
        )
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    s = cu_seqlens.shape[0] - 1
    ref = check_side_input("ref_logps", ref_logps, s, hidden.device)
    anchor = check_side_input("anchor_logps", anchor_logps, s, hidden.device)
    tgt = check_side_input("targets", targets, s, hidden.device)
    check_grad_filter(grad_filter)
    resolve_deterministic(deterministic)
    if tgt is not None:
        check_unit_interval("targets", tgt, sync=check_values)  # win rates; CUDA: deferred, no host sync
    # Validate the objective's needs before the expensive head runs (the lengths are counted from the labels).
    meta = torch.empty(s, device="meta")
    objective.check_inputs(meta, *(None if t is None else t.to("meta") for t in (ref, anchor, tgt)),
                           lengths=meta if objective.needs_lengths else None)
    if resolve_impl(impl, hidden.device) == "triton" and objective.kernel_spec() is not None:
        # The fused epilogue: split merge, sequence sums, objective, per-token gradient and mean in one kernel.
        check_head_inputs(hidden, weight, labels, cu_seqlens, bias, ignore_index=ignore_index,
                          check_values=check_values)
        loss, logps = _import(_IMPL_MODULES["triton"]).preference_loss(
            hidden, weight, labels, cu_seqlens, objective, ref_logps=ref, anchor_logps=anchor, targets=tgt, bias=bias,
            ignore_index=ignore_index, **_exactness_options("triton", grad_filter, deterministic))
        return (loss, logps) if return_logps else loss
    logps = sequence_logps(hidden, weight, labels, cu_seqlens, bias=bias, ignore_index=ignore_index, impl=impl,
                           check_values=check_values, grad_filter=grad_filter, deterministic=deterministic)
    ref, anchor, tgt = (None if t is None else t.to(logps.dtype) for t in (ref, anchor, tgt))
    lengths = response_lengths(labels, cu_seqlens, ignore_index) if objective.needs_lengths else None
    loss = objective(logps, ref, anchor, tgt, lengths)
    return (loss, logps.detach()) if return_logps else loss


def response_lengths(labels: Tensor, cu_seqlens: Tensor, ignore_index: int = -100) -> Tensor:
    """[S] fp32: each packed sequence's number of scored tokens (labels other than ``ignore_index``), the lengths a
    length-normalised objective divides by (the fused epilogue counts the same tokens)."""
    counts = torch.zeros(labels.shape[0] + 1, dtype=torch.int64, device=labels.device)
    counts[1:] = torch.cumsum((labels != ignore_index).to(torch.int64), 0)
    cu = cu_seqlens.to(device=labels.device, dtype=torch.int64)
    return (counts[cu[1:]] - counts[cu[:-1]]).to(torch.float32)
