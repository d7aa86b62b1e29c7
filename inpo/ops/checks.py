"""Argument checks shared by every head implementation. Errors name the argument, value and expectation."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
IMPLS = ("auto", "triton", "torch", "naive", "native")


def check_head_inputs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    cu_seqlens: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    check_values: bool = True,
) -> None:
    """Validate the fused head's inputs.

    Label range and cu_seqlens boundaries are checked on every call (see :func:`check_values_on_device`):
    ``check_values=True`` raises at once (one host sync on CUDA); ``False`` keeps CUDA calls sync-free and raises
    the ValueError at a later head call, after the device has finished this one. CPU calls always raise at once.
    """
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_ignore_index(ignore_index)
    check_flag("check_values", check_values)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [N, H] (packed tokens), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, H] (nn.Linear layout), got shape {tuple(weight.shape)}")
    n, h = hidden.shape
    v = weight.shape[0]
    if v == 0:
        raise ValueError(f"weight must be [V, H] with V >= 1 (the vocabulary), got shape {tuple(weight.shape)}")
    if weight.shape[1] != h:
        raise ValueError(f"weight must be [V, H] with H={h} (hidden's last dim), got shape {tuple(weight.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"hidden must be a floating tensor (fp32/fp16/bf16/fp64), got dtype {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match hidden dtype {hidden.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D [N] with N={n} (hidden's rows), got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 (or int32), got dtype {labels.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D [S+1] with S >= 1, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 (or int64), got dtype {cu_seqlens.dtype}")
    for name, t in (("weight", weight), ("labels", labels), ("cu_seqlens", cu_seqlens)):
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}; all inputs must share a device")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (v,):
            raise ValueError(f"bias must be 1-D [V] with V={v}, got shape {tuple(bias.shape)}")
        if bias.dtype not in FLOAT_DTYPES:
            raise TypeError(f"bias must be a floating tensor (fp32/fp16/bf16/fp64), got dtype {bias.dtype}")
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {hidden.device}")
    check_values_on_device(labels, cu_seqlens, n, v, ignore_index=ignore_index, sync=check_values)


# ---- value checks: label range and cu_seqlens boundaries, on every path -------------------------------------
# One computation on the inputs' device (no host sync) yields 7 integers; the same function turns them into the
# error message on every path. Where they are read decides the cost:
#   * CPU tensors, or ``check_values=True``: read at once (a host sync on CUDA; free on CPU).
#   * CUDA tensors with ``check_values=False`` (the trainer's hot loop): copied into pinned host memory behind a
#     CUDA event, with no host sync; the ValueError is raised by the first head call (or
#     :func:`raise_pending_value_errors`) that finds the event complete -- i.e. after the next natural sync (the
#     trainer's loss.item()/logging), naming the bad index. Until then the bad values are harmless to memory:
#     the kernels never index by a label (they compare it with column numbers) and segment ids are clamped.
#   * under torch.compile: ``torch._assert_async`` (traceable; the message names the check, not the index).
_NONE = -1  # "no bad entry" in the index slots of the flags


def value_flags(labels: Tensor, cu_seqlens: Tensor, n: int, v: int, ignore_index: int) -> Tensor:
    """[7] int64 on the inputs' device, computed without a host sync: (first bad label's token or -1, its label,
    cu_seqlens[0], cu_seqlens[-1], first decreasing boundary i or -1, cu_seqlens[i], cu_seqlens[i+1])."""
    dev = labels.device
    lab = labels.long()
    bad = (lab != ignore_index) & ((lab < 0) | (lab >= v))
    tok = torch.where(bad, torch.arange(n, device=dev), n).amin() if n else torch.tensor(n, device=dev)
    tok = torch.where(tok == n, _NONE, tok)
    # index_select, not t[0-dim tensor]: Python indexing with a 0-dim tensor reads it on the host (a sync).
    lab_val = lab.index_select(0, tok.clamp(min=0).view(1))[0] if n else torch.tensor(0, device=dev)
    cu = cu_seqlens.long()
    s = cu.shape[0] - 1
    dec = cu[1:] < cu[:-1]
    first_dec = torch.where(dec, torch.arange(s, device=dev), s).amin()
    pair = cu.index_select(0, torch.stack([first_dec, first_dec + 1]).clamp(max=s))  # (cu[i], cu[i+1])
    return torch.stack([tok, lab_val, cu[0], cu[-1], torch.where(first_dec == s, _NONE, first_dec), pair[0], pair[1]])


def describe_bad_values(flags: list[int], n: int, v: int, ignore_index: int) -> str | None:
    """The error message for :func:`value_flags` read on the host, or None when every value is fine."""
    tok, lab, first, last, dec, a, b = flags
    if first != 0 or last != n:
        return f"cu_seqlens must start at 0 and end at N={n}, got first={first}, last={last}"
    if dec != _NONE:
        return f"cu_seqlens must be non-decreasing, got cu_seqlens[{dec}]={a} > cu_seqlens[{dec + 1}]={b}"
    if tok != _NONE:
        return f"labels must be in [0, V={v}) or ignore_index={ignore_index}, got label {lab} at token {tok}"
    return None


@dataclass
class _Pending:
    host: Tensor  # flags in (pinned) host memory
    event: object  # torch.cuda.Event recorded after the copy, or None (already on host)
    describe: Callable[[list], str | None]  # flags (as a list) -> error message or None

    def ready(self, wait: bool) -> bool:
        if self.event is None:
            return True
        if wait:
            self.event.synchronize()
            return True
        return bool(self.event.query())


_PENDING: deque[_Pending] = deque()
_PENDING_LOCK = threading.Lock()


def defer_value_check(flags: Tensor, describe: Callable[[list], str | None]) -> None:
    """Queue ``flags`` to be read once the device has produced them, without a sync; ``describe(flags.tolist())``
    then gives the error message (None = fine)."""
    if flags.device.type == "cuda":
        host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
    else:
        host, event = flags, None
    with _PENDING_LOCK:
        _PENDING.append(_Pending(host, event, describe))


def raise_pending_value_errors(wait: bool = False) -> None:
    """Raise the ValueError of the oldest deferred value check that found bad labels or cu_seqlens.

    ``wait=False`` (what every head call does first) only reads checks whose device work is complete -- no host
    sync; ``wait=True`` waits for all of them (end of training, tests). Checks found clean are dropped.
    """
    with _PENDING_LOCK:
        while _PENDING and _PENDING[0].ready(wait):
            p = _PENDING.popleft()
            msg = p.describe(p.host.tolist())
            if msg is not None:
                raise ValueError(f"{msg} (an earlier head call's inputs, checked on the device without a host sync)")


def check_values_on_device(labels: Tensor, cu_seqlens: Tensor, n: int, v: int, *, ignore_index: int = -100,
                           sync: bool = False) -> None:
    """Label range and cu_seqlens boundaries of every head call (see the comment above :func:`value_flags`)."""
    if torch.compiler.is_compiling():
        ok = (value_flags(labels, cu_seqlens, n, v, ignore_index)[[0, 2, 3, 4]]
              == torch.tensor([_NONE, 0, n, _NONE], device=labels.device)).all()
        torch._assert_async(ok, f"inpo head: labels must be in [0, V={v}) or ignore_index={ignore_index}, and "
                                f"cu_seqlens must rise from 0 to N={n}")
        return
    raise_pending_value_errors(wait=False)
    global _LAST_CHECKED
    key = (labels._version, cu_seqlens._version, n, v, ignore_index, sync)
    last = _LAST_CHECKED
    if last is not None and last[0]() is labels and last[1]() is cu_seqlens and last[2] == key:
        return  # the same tensors, unmodified, were just checked (the dispatcher, then an impl's own entry)
    _check_or_defer(value_flags(labels, cu_seqlens, n, v, ignore_index),
                    lambda f: describe_bad_values(f, n, v, ignore_index), sync)
    _LAST_CHECKED = (weakref.ref(labels), weakref.ref(cu_seqlens), key)


# (weakref(labels), weakref(cu_seqlens), versions and arguments) of the last check: a dead tensor never matches,
# and an in-place change bumps its version.
_LAST_CHECKED: tuple | None = None


def _check_or_defer(flags: Tensor, describe: Callable[[list], str | None], sync: bool) -> None:
    if sync or flags.device.type != "cuda":
        msg = describe(flags.tolist())
        if msg is not None:
            raise ValueError(msg)
    else:
        defer_value_check(flags, describe)


def check_unit_interval(name: str, t: Tensor, *, sync: bool = False) -> None:
    """Every entry of ``t`` in [0, 1] (SPPO's win-rate targets): the error names the first bad index and value.
    Checked like the labels: at once on CPU or with ``sync``, else deferred without a host sync (CUDA)."""
    if t.numel() == 0 or t.device.type == "meta":
        return
    bad = ~((t >= 0) & (t <= 1))  # NaN is bad too
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), f"{name} must be in [0, 1]")
        return
    flat = t.detach().reshape(-1).double()
    first = torch.where(bad.reshape(-1), torch.arange(flat.numel(), device=t.device), flat.numel()).amin()
    value = flat.index_select(0, first.clamp(max=flat.numel() - 1).view(1))[0]
    size = flat.numel()

    def describe(f):
        if int(f[0]) == size:
            return None
        return f"{name} must be in [0, 1] (win-rate estimates), got {f[1]} at index {int(f[0])}"

    _check_or_defer(torch.stack([first.double(), value]), describe, sync)


def check_impl(impl: str) -> None:
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, one of {IMPLS}, got {type(impl).__name__} {impl!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_flag(name: str, value) -> None:
    """A boolean switch (``check_values``, ``return_logps``): True or False, nothing truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def check_ignore_index(ignore_index) -> None:
    """``ignore_index``: a Python int (the label value of tokens that carry no log-prob, -100 by default)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int (the label of tokens to skip, default -100), got "
                        f"{type(ignore_index).__name__} {ignore_index!r}")


def check_side_input(name: str, t: Tensor | None, s: int, device: torch.device) -> Tensor | None:
    """Per-sequence side inputs (ref/anchor log-probs, SPPO targets): [S], same device, cast to fp32."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != (s,):
        raise ValueError(f"{name} must be 1-D [S] with S={s} (one value per sequence), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (one value per sequence), got dtype {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {device}")
    return t.detach().float()


def check_grad_filter(grad_filter) -> float | None:
    """``grad_filter``: None (exact gradients) or the opt-in per-row budget of skipped softmax mass, a real number
    in [0, 1) (0 = exact, like None). Returns it as a float (or None)."""
    if grad_filter is None:
        return None
    if isinstance(grad_filter, bool) or not isinstance(grad_filter, (int, float)) or not 0.0 <= grad_filter < 1.0:
        raise ValueError(f"grad_filter must be None (exact gradients) or a float in [0, 1) (the per-row budget of "
                         f"skipped softmax probability mass), got {grad_filter!r}")
    return float(grad_filter)


def check_deterministic(deterministic) -> bool | None:
    """``deterministic``: None (follow ``torch.are_deterministic_algorithms_enabled()``), True or False."""
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be None (follow torch.are_deterministic_algorithms_enabled()), True or "
                        f"False, got {deterministic!r}")
    return deterministic


def resolve_deterministic(deterministic: bool | None) -> bool:
    """None follows ``torch.are_deterministic_algorithms_enabled()``; True/False force."""
    check_deterministic(deterministic)
    return torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic
