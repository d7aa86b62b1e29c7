"""The naive reference head: materialises the [N, V] logits. For tests and benchmarks only.

It does what a plain framework would, with fp32 accumulation: the [N, V] logits come out of an fp32-output GEMM
(CUDA, in the input dtype on tensor cores) or an fp32 GEMM on upcast operands (CPU) -- never rounded to fp16/bf16
-- then log-softmax in fp32 (fp64 for fp64 inputs), and the backward's two GEMMs accumulate in fp32 the same way
(:mod:`inpo.ops.gemm`) on dz rounded once to the input dtype, as on tensor cores. Called with fp64 inputs it is the ground truth the other implementations are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inpo.ops.gemm import LOW_PRECISION, mm_fp32
from inpo.ops.transform import IDENTITY, LogitTransform


def segment_ids(cu_seqlens: Tensor, n: int) -> Tensor:
    """Sequence index of every packed token: [N] int64 (empty sequences simply own no token).

    A binary search over the boundaries, clamped to [0, S): always in range, even for a malformed cu_seqlens
    whose check is still pending on the device (``repeat_interleave`` would write out of bounds on CUDA)."""
    cu = cu_seqlens.long()
    tokens = torch.arange(n, device=cu.device)
    return torch.searchsorted(cu[1:], tokens, right=True).clamp_(max=cu.numel() - 2)


def segment_sum(values: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Sum [N] token values into [S] sequence values."""
    s = cu_seqlens.numel() - 1
    out = torch.zeros(s, dtype=values.dtype, device=values.device)
    return out.index_add(0, segment_ids(cu_seqlens, values.shape[0]), values)


def segment_sum_ordered(values: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Like :func:`segment_sum` for fp32 ``values`` but with a fixed summation order on every device: differences
    of an fp64 prefix sum (a scan, no atomics; ``index_add_`` on CUDA adds with atomics in arbitrary order).
    Error: fp64 rounding of the running sum, far below the fp32 result's own rounding for any realistic N."""
    prefix = torch.zeros(values.shape[0] + 1, dtype=torch.float64, device=values.device)
    torch.cumsum(values.double(), 0, out=prefix[1:])
    cu = cu_seqlens.long()
    return (prefix[cu[1:]] - prefix[cu[:-1]]).to(values.dtype)


class _Fp32Logits(torch.autograd.Function):
    """fp32 logits ``hidden @ weight.T`` of fp16/bf16 inputs, and their gradients, with fp32 accumulation.

    The backward rounds the logits' gradient dz once to the input dtype before its two GEMMs, on every device:
    that is what a tensor-core GEMM needs (and what the Triton kernels do), so this same-dtype reference has the
    same error model on CPU and GPU -- one rounding of each dz entry, fp32 sums, one rounding of each output.
    """

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.save_for_backward(hidden, weight)
        return mm_fp32(hidden, weight.t())

    @staticmethod
    def backward(ctx, dz):
        hidden, weight = ctx.saved_tensors
        dz = dz.to(hidden.dtype)
        dh = mm_fp32(dz, weight).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        dw = mm_fp32(dz.t(), hidden).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dh, dw


def token_logps_naive(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                      *, ignore_index: int = -100, transform: LogitTransform = IDENTITY) -> Tensor:
    """Per-token log-probs [N] (0 where the label is ignored), via materialised logits (``transform`` applied to
    them in the accumulation dtype, differentiated by autograd: :mod:`inpo.ops.transform`)."""
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = _Fp32Logits.apply(hidden, weight) if hidden.dtype in LOW_PRECISION else hidden @ weight.t()
    if bias is not None:
        logits = logits + bias.to(acc)
    logprobs = torch.log_softmax(transform.apply(logits.to(acc)), dim=-1)
    valid = labels != ignore_index
    # Clamped: an out-of-range label whose check is pending on the device must not index out of bounds.
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long().clamp(0, logits.shape[1] - 1)
    picked = logprobs.gather(1, safe[:, None]).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def sequence_logps_naive(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor,
                         bias: Tensor | None = None, *, ignore_index: int = -100, grad_filter: float | None = None,
                         deterministic: bool = False, transform: LogitTransform = IDENTITY) -> Tensor:
    """[S] summed log-probs (fp32, or fp64 for fp64 inputs); differentiable through plain autograd.

    ``grad_filter`` is accepted and ignored (no filter: exact gradients); ``deterministic=True`` sums each
    sequence in a fixed order (:func:`segment_sum_ordered`; autograd's own backward ops are deterministic only
    under ``torch.use_deterministic_algorithms``)."""
    tok = token_logps_naive(hidden, weight, labels, bias, ignore_index=ignore_index, transform=transform)
    return segment_sum_ordered(tok, cu_seqlens) if deterministic else segment_sum(tok, cu_seqlens)
