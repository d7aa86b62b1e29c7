"""GEMMs that accumulate in fp32 for fp16/bf16 operands: the one place the torch paths get them from.

A plain ``a @ b`` on fp16/bf16 tensors returns the input dtype: every partial product sum is rounded to 8 (bf16)
or 11 (fp16) mantissa bits before anything else sees it, and a loop that adds such per-chunk results into an fp32
accumulator rounds once per chunk. These helpers never round the product:

* CUDA torch has ``mm``/``addmm(..., out_dtype=torch.float32)``: a tensor-core GEMM in the low-precision dtype
  whose fp32 accumulator is written out as is. fp32 operands (e.g. an fp32 ``dz``) are rounded once to the
  low-precision dtype first, as the Triton kernels do before ``tl.dot``.
* Elsewhere (CPU torch has neither op) both operands are upcast to fp32 and the GEMM runs in fp32: no rounding
  at all, at the cost of an fp32 copy of each operand (callers pass bounded chunks).

Which one a device type supports is probed once (tiny tensors) and cached per device type.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)

_OUT_DTYPE: dict[str, bool] = {}  # device type -> has mm/addmm(out_dtype=float32) for fp16/bf16


def has_out_dtype_gemm(device: torch.device) -> bool:
    """True when ``torch.mm(a, b, out_dtype=torch.float32)`` and ``torch.addmm(..., out_dtype=...)`` run on this
    device type for bf16 operands (CUDA torch >= 2.8); probed once per device type."""
    known = _OUT_DTYPE.get(device.type)
    if known is None:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
        try:
            torch.mm(a, a, out_dtype=torch.float32)
            torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
            known = bool((acc == 2).all())
        except (RuntimeError, TypeError, NotImplementedError):
            known = False
        _OUT_DTYPE[device.type] = known
    return known


def _operands(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, bool]:
    """(a, b, use_out_dtype): both in one low-precision dtype for an out_dtype GEMM, or both fp32."""
    low = next((t.dtype for t in (b, a) if t.dtype in LOW_PRECISION), None)
    if low is None:
        return a, b, False
    if has_out_dtype_gemm(a.device):
        return a.to(low), b.to(low), True
    return a.float(), b.float(), False


def mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` as an fp32 tensor accumulated in fp32 (fp64 operands stay fp64: ``a @ b``)."""
    if a.dtype == torch.float64 or b.dtype == torch.float64:
        return a @ b
    a, b, out_dtype = _operands(a, b)
    return torch.mm(a, b, out_dtype=torch.float32) if out_dtype else a @ b


def addmm_fp32(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` in place for an fp32 ``acc``, without rounding ``a @ b`` to a low-precision dtype."""
    if acc.dtype != torch.float32:
        raise TypeError(f"addmm_fp32 accumulates into an fp32 tensor, got acc of dtype {acc.dtype}")
    if a.dtype == torch.float64 or b.dtype == torch.float64:  # fp64 operands: exact product, one final rounding
        acc.add_((a.double() @ b.double()).float())
        return
    a, b, out_dtype = _operands(a, b)
    if out_dtype:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a, b)
