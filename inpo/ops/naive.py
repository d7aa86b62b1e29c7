"""The naive reference head: materialises the [N, V] logits. For tests and benchmarks only.

It does what a plain framework would: the GEMM in the input dtype, then log-softmax in fp32 (fp64 for
fp64 inputs). Called with fp64 inputs it is the ground truth the other implementations are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def token_logps_naive(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                      *, ignore_index: int = -100) -> Tensor:
    """Per-token log-probs [N] (0 where the label is ignored), via materialised logits."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logprobs = torch.log_softmax(logits.to(acc), dim=-1)
    valid = labels != ignore_index
    # Clamped: an out-of-range label whose check is pending on the device must not index out of bounds.
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long().clamp(0, logits.shape[1] - 1)
    picked = logprobs.gather(1, safe[:, None]).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def sequence_logps_naive(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor,
                         bias: Tensor | None = None, *, ignore_index: int = -100) -> Tensor:
    """[S] summed log-probs (fp32, or fp64 for fp64 inputs); differentiable through plain autograd."""
    return segment_sum(token_logps_naive(hidden, weight, labels, bias, ignore_index=ignore_index), cu_seqlens)
