"""Argument checks shared by every head implementation. Errors name the argument, value and expectation."""

from __future__ import annotations

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

    ``check_values`` also checks label range and cu_seqlens monotonicity, which reads device memory
    (one host sync); the trainer may turn it off in its hot loop once the data pipeline is trusted.
    """
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
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
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {hidden.device}")
    if not check_values:
        return
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    if cu[0].item() != 0 or cu[-1].item() != n:
        raise ValueError(f"cu_seqlens must start at 0 and end at N={n}, got first={cu[0].item()}, last={cu[-1].item()}")
    if (cu[1:] < cu[:-1]).any():
        bad = int(torch.nonzero(cu[1:] < cu[:-1])[0].item())
        raise ValueError(
            f"cu_seqlens must be non-decreasing, got cu_seqlens[{bad}]={cu[bad].item()} > "
            f"cu_seqlens[{bad + 1}]={cu[bad + 1].item()}"
        )
    if n > 0:
        valid = labels != ignore_index
        if valid.any():
            lv = labels[valid]
            lo, hi = int(lv.min().item()), int(lv.max().item())
            if lo < 0 or hi >= v:
                bad = hi if hi >= v else lo
                raise ValueError(
                    f"labels must be in [0, V={v}) or ignore_index={ignore_index}, got label {bad}"
                )


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_side_input(name: str, t: Tensor | None, s: int, device: torch.device) -> Tensor | None:
    """Per-sequence side inputs (ref/anchor log-probs, SPPO targets): [S], same device, cast to fp32."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != (s,):
        raise ValueError(f"{name} must be 1-D [S] with S={s} (one value per sequence), got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {device}")
    return t.detach().float()
