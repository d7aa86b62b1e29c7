"""Pure-PyTorch fused head: chunked over tokens and vocabulary, bounded memory, runs anywhere.

Same algorithm as the Triton kernels, expressed with ATen GEMMs: forward keeps a running
log-sum-exp over vocabulary chunks and picks the target logit on the fly; backward recomputes each
chunk's logits and accumulates dHidden / dW / dBias in fp32. Extra memory: one [chunk_tokens,
chunk_vocab] fp32 tile plus the fp32 gradient accumulators -- never [N, V].

fp16/bf16 inputs accumulate in fp32 end to end (:mod:`inpo.ops.gemm`): each logits tile comes out of an
fp32-output GEMM (CUDA) or an fp32 GEMM on upcast operands (CPU), and each chunk's dHidden/dW product is added
into the fp32 accumulators without being rounded to the input dtype first. The only roundings are the final
casts of the gradients (and, on CUDA, dz to the input dtype before its tensor-core GEMM, as in the Triton
kernels). A model's logit transform (scale, softcap: :mod:`inpo.ops.transform`) is applied to each tile in fp32
and its derivative chained into dz. The backward's reduction order is fixed (chunk loops), so it is deterministic;
``deterministic=True`` also makes the forward's per-sequence sum order-fixed (see ``segment_sum_ordered``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from inpo.ops.gemm import addmm_fp32, mm_fp32
from inpo.ops.naive import segment_ids, segment_sum_ordered
from inpo.ops.transform import IDENTITY, LogitTransform

# One fp32 logits tile of at most this many elements (64 Mi elements = 256 MiB on GPU; 8 Mi on CPU).
_TILE_ELEMS = {"cuda": 64 * 2**20, "cpu": 8 * 2**20}


def default_chunks(n: int, v: int, device: torch.device) -> tuple[int, int]:
    budget = _TILE_ELEMS.get(device.type, _TILE_ELEMS["cpu"])
    chunk_vocab = min(v, 32768 if device.type == "cuda" else 8192)
    chunk_tokens = max(1, min(n, budget // max(chunk_vocab, 1)))
    return chunk_tokens, chunk_vocab


def _logits(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    z = mm_fp32(h, w.t()).float()  # fp64 inputs: fp32 logits, like every other dtype here
    return z if b is None else z + b.float()


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, cu_seqlens, ignore_index, chunk_tokens, chunk_vocab, deterministic,
                transform):
        n, v = hidden.shape[0], weight.shape[0]
        valid = labels != ignore_index
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        target = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for n0 in range(0, n, chunk_tokens):
            n1 = min(n, n0 + chunk_tokens)
            h, lab = hidden[n0:n1], labels[n0:n1]
            m = torch.full((n1 - n0,), float("-inf"), device=hidden.device)
            s = torch.zeros(n1 - n0, device=hidden.device)
            for v0 in range(0, v, chunk_vocab):
                v1 = min(v, v0 + chunk_vocab)
                z = transform.apply_(_logits(h, weight[v0:v1], None if bias is None else bias[v0:v1]))
                m_new = torch.maximum(m, z.amax(dim=1))
                # A row whose logits so far are all -inf (a -inf bias over the whole chunk: masked tokens) keeps
                # m = -inf; shift by 0 there, or exp(-inf - -inf) = NaN. Its s stays 0 until a finite logit.
                shift = torch.where(m_new == float("-inf"), 0.0, m_new)
                s = s * torch.exp(m - shift) + torch.exp(z - shift[:, None]).sum(dim=1)
                m = m_new
                inside = (lab >= v0) & (lab < v1)
                col = (lab - v0).clamp(0, v1 - v0 - 1)
                target[n0:n1] += torch.where(inside, z.gather(1, col[:, None]).squeeze(1), 0.0)
            lse[n0:n1] = m + torch.log(s)
        tok = torch.where(valid, target - lse, 0.0)
        seg = segment_ids(cu_seqlens, n)
        if deterministic:
            out = segment_sum_ordered(tok, cu_seqlens)
        else:
            out = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.float32, device=hidden.device).index_add_(0, seg, tok)
        ctx.save_for_backward(hidden, weight, bias, labels, seg, lse)
        ctx.ignore_index, ctx.chunks, ctx.transform = ignore_index, (chunk_tokens, chunk_vocab), transform
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, seg, lse = ctx.saved_tensors
        chunk_tokens, chunk_vocab = ctx.chunks
        n, v = hidden.shape[0], weight.shape[0]
        valid = labels != ctx.ignore_index
        g_tok = torch.where(valid, grad_out.float()[seg], 0.0)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device) if need_w else None
        d_bias = torch.zeros(v, dtype=torch.float32, device=hidden.device) if need_b else None
        for n0 in range(0, n, chunk_tokens):
            n1 = min(n, n0 + chunk_tokens)
            g = g_tok[n0:n1]
            if not bool((g != 0).any()):  # fully ignored chunk: contributes nothing
                continue
            h, lab = hidden[n0:n1], labels[n0:n1]
            for v0 in range(0, v, chunk_vocab):
                v1 = min(v, v0 + chunk_vocab)
                z, dz_draw = ctx.transform.apply_with_grad_(
                    _logits(h, weight[v0:v1], None if bias is None else bias[v0:v1]))
                # dlogp/dz = onehot(label) - softmax(z); scaled by the sequence's upstream gradient, then chained
                # through the logit transform (dz/draw: the scale, times sech² under a softcap).
                dz = torch.exp(z - lse[n0:n1, None]).mul_(-g[:, None])
                inside = ((lab >= v0) & (lab < v1)).nonzero().squeeze(1)
                dz[inside, lab[inside] - v0] += g[inside]
                if not isinstance(dz_draw, float) or dz_draw != 1.0:
                    dz.mul_(dz_draw)
                if need_h:
                    addmm_fp32(d_hidden[n0:n1], dz, weight[v0:v1])
                if need_w:
                    addmm_fp32(d_weight[v0:v1], dz.t(), h)
                if need_b:
                    d_bias[v0:v1] += dz.sum(dim=0)
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return (cast(d_hidden, hidden), cast(d_weight, weight), cast(d_bias, bias if bias is not None else hidden),
                None, None, None, None, None, None, None)


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, bias: Tensor | None = None,
                   *, ignore_index: int = -100, chunk_tokens: int | None = None,
                   chunk_vocab: int | None = None, grad_filter: float | None = None,
                   deterministic: bool | None = None, transform: LogitTransform = IDENTITY) -> Tensor:
    """``grad_filter`` is accepted and ignored: this path has no filter, its gradients are exact (the
    filter's bound holds with zero error). ``deterministic`` (None = ``torch.are_deterministic_algorithms_enabled()``)
    only changes the forward's per-sequence sum; the backward is deterministic anyway."""
    dn, dv = default_chunks(hidden.shape[0], weight.shape[0], hidden.device)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    return _ChunkedHead.apply(hidden, weight, bias, labels, cu_seqlens, ignore_index,
                              chunk_tokens or dn, chunk_vocab or dv, bool(deterministic), transform)
