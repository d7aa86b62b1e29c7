"""Triton epilogue of the fused preference loss: one kernel from the head's split partials to the loss.

After the forward's vocabulary sweep (``head_fwd_kernel`` writes per-token partials ``m, s, t`` of each
vocabulary split to [SPLITS, N] buffers), ``preference_epilogue_kernel`` does the rest of the forward and the
loss side of the backward in one launch, grid = (groups,), one program per *group*: a pair (sequences 2i, 2i+1)
for pairwise objectives, one sequence for SPPO. Each program

    1. walks its group's tokens (``cu_seqlens``) in BLOCK_T blocks, merges the splits into the log-sum-exp
       (``lse = M + log Σ_k s_k·exp(m_k − M)``; an empty split or an all-masked one has m = −inf and drops out,
       so no inf − inf reaches ``exp``), writes ``lse`` (the backward's input) and sums the token log-probs
       ``t − lse`` into the sequence log-probs (written to ``Logps``; ignored tokens add 0);
    2. evaluates the objective from its kernel spec (:class:`inpo.objectives.KernelSpec`, the objective's own
       constants; the kernel knows two loss shapes and nothing per objective):
           u = Δθ − ref_coef·Δref − anchor_coef·Δanchor − offset − (target − target_center)/target_div
           (Δ = chosen − rejected for pairwise objectives, the sequence's own value for SPPO; a term whose
           input the objective does not use is not read), z = scale·u; with LENGTH_NORM (TRL's ``ipo`` /
           ``sigmoid_norm``, SimPO) each sequence's θ − ref_coef·ref − anchor_coef·anchor is divided by its count
           of non-ignored tokens (clamped at 1) before Δ is taken,
           "squared":    ℓ = z²,                            dℓ/du = 2·scale·z
           "logsigmoid": ℓ = −(1−ε)·logσ(z) − ε·logσ(−z),  dℓ/du = scale·(σ(z) − (1 − ε));
    3. writes the per-token upstream gradient of the *mean* loss, ``Gtok = ±dℓ/du / groups`` on the group's
       non-ignored tokens (+ for the chosen or only sequence, − for the rejected one; divided by the sequence's
       clamped length under LENGTH_NORM), 0 elsewhere: exactly the
       ``g_tok`` the head's backward kernels consume, so the backward needs no per-objective glue;
    4. stores its loss ℓ in ``GroupLoss`` and takes a ticket; the program that draws the last ticket sums
       ``GroupLoss`` in a fixed order and writes the mean to ``Loss``.

Why a ticket and not ``atomic_add`` of ℓ/groups into ``Loss``: fp32 atomics add in arrival order, so the loss
would change in its last bits from run to run; the ticket keeps the reduction in one launch *and* deterministic
(the classic "last block reduces" pattern: each program's store is ordered before its ticket by a CTA barrier
plus the acq_rel atomic, and the last program reads the partials with volatile loads, from L2).
The counter must be zero at launch (the launcher allocates it zeroed).

Cost: the epilogue touches O(N·SPLITS + S) floats, nothing per vocabulary entry.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOSS_SQUARED = 0
LOSS_LOGSIGMOID = 1


@triton.jit
def _merged_tokens(PartM, PartS, PartT, Labels, offs, mask, N, SPLITS, ignore_index):
    """(lse, token log-prob, valid) of a block of tokens: the splits' online log-sum-exp merged; 0 where ignored."""
    lab = tl.load(Labels + offs, mask=mask, other=ignore_index)
    valid = mask & (lab != ignore_index)
    big_m = tl.full(offs.shape, float("-inf"), tl.float32)
    for k in range(SPLITS):
        big_m = tl.maximum(big_m, tl.load(PartM + k * N + offs, mask=valid, other=float("-inf")))
    # A token whose every split is empty (all masked) keeps M = -inf; shift by 0 there so exp() sees no inf - inf.
    shift = tl.where(big_m == float("-inf"), 0.0, big_m)
    s = tl.zeros(offs.shape, tl.float32)
    t = tl.zeros(offs.shape, tl.float32)
    for k in range(SPLITS):
        m_k = tl.load(PartM + k * N + offs, mask=valid, other=float("-inf"))
        s_k = tl.load(PartS + k * N + offs, mask=valid, other=0.0)
        s += tl.where(m_k == float("-inf"), 0.0, s_k * tl.exp(m_k - shift))
        t += tl.load(PartT + k * N + offs, mask=valid, other=0.0)
    lse = tl.where(valid, shift + tl.log(tl.where(valid, s, 1.0)), 0.0)  # ignored tokens: s = 0, no log(0)
    return lse, tl.where(valid, t - lse, 0.0), valid


@triton.jit
def _sequence_logp(PartM, PartS, PartT, Labels, Lse, CuSeqlens, seq, N, SPLITS, ignore_index,
                   BLOCK_T: tl.constexpr):
    """(summed log-prob, number of non-ignored tokens) of sequence ``seq``; writes its tokens' lse."""
    start = tl.load(CuSeqlens + seq).to(tl.int64)
    end = tl.load(CuSeqlens + seq + 1).to(tl.int64)
    acc = tl.zeros((BLOCK_T,), tl.float32)
    count = tl.zeros((BLOCK_T,), tl.float32)
    for t0 in range(start, end, BLOCK_T):
        offs = t0 + tl.arange(0, BLOCK_T)
        mask = offs < end
        lse, tok, valid = _merged_tokens(PartM, PartS, PartT, Labels, offs, mask, N, SPLITS, ignore_index)
        tl.store(Lse + offs, lse, mask=mask)
        acc += tok
        count += valid.to(tl.float32)
    return tl.sum(acc, axis=0), tl.sum(count, axis=0)


@triton.jit
def _sequence_ratio(lp, Ref, Anchor, seq, ref_coef, anchor_coef, USE_REF: tl.constexpr, USE_ANCHOR: tl.constexpr):
    """θ − ref_coef·ref − anchor_coef·anchor of one sequence (the length-normalised objectives' numerator)."""
    v = lp
    if USE_REF:
        v = v - ref_coef * tl.load(Ref + seq)
    if USE_ANCHOR:
        v = v - anchor_coef * tl.load(Anchor + seq)
    return v


@triton.jit
def _write_token_grads(Labels, Gtok, CuSeqlens, seq, g, ignore_index, BLOCK_T: tl.constexpr):
    """Gtok = g on sequence ``seq``'s non-ignored tokens, 0 on its ignored ones."""
    start = tl.load(CuSeqlens + seq).to(tl.int64)
    end = tl.load(CuSeqlens + seq + 1).to(tl.int64)
    for t0 in range(start, end, BLOCK_T):
        offs = t0 + tl.arange(0, BLOCK_T)
        mask = offs < end
        lab = tl.load(Labels + offs, mask=mask, other=ignore_index)
        tl.store(Gtok + offs, tl.where(lab != ignore_index, g, 0.0), mask=mask)


@triton.jit
def _side_term(Ptr, seq, PAIRWISE: tl.constexpr):
    """A side input's Δ (chosen − rejected) for pairwise objectives, its own value otherwise."""
    if PAIRWISE:
        return tl.load(Ptr + seq) - tl.load(Ptr + seq + 1)
    else:
        return tl.load(Ptr + seq)


@triton.jit
def _softplus_neg_abs(z):
    """log(1 + exp(−|z|)) without losing the small values log(1 + tiny) rounds to 0."""
    e = tl.exp(-tl.abs(z))
    return tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def _loss_and_slope(z, scale, smoothing, LOSS_KIND: tl.constexpr):
    """(ℓ, dℓ/du) of z = scale·u for the two loss shapes."""
    if LOSS_KIND == 0:  # LOSS_SQUARED
        loss = z * z
        dloss = 2.0 * scale * z
    else:  # LOSS_LOGSIGMOID: -logσ(z) = max(-z, 0) + log(1 + e^-|z|)
        soft = _softplus_neg_abs(z)
        loss = (1.0 - smoothing) * (tl.maximum(-z, 0.0) + soft) + smoothing * (tl.maximum(z, 0.0) + soft)
        e = tl.exp(-tl.abs(z))
        sig = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        dloss = scale * (sig - (1.0 - smoothing))
    return loss, dloss


@triton.jit
def _mean_by_last_program(GroupLoss, Loss, Ticket, grp, loss, num_groups, BLOCK_G: tl.constexpr):
    """Deterministic mean over groups in the same launch: the last program to finish sums GroupLoss in order."""
    tl.store(GroupLoss + grp, loss)
    tl.debug_barrier()  # every thread's store happens before the ticket (release is cumulative over the CTA)
    ticket = tl.atomic_add(Ticket, 1, sem="acq_rel")
    if ticket == num_groups - 1:
        acc = tl.zeros((BLOCK_G,), tl.float32)
        for g0 in range(0, num_groups, BLOCK_G):
            offs = g0 + tl.arange(0, BLOCK_G)
            acc += tl.load(GroupLoss + offs, mask=offs < num_groups, other=0.0, volatile=True)
        tl.store(Loss, tl.sum(acc, axis=0) / num_groups.to(tl.float32))


@triton.jit(do_not_specialize=["N", "SPLITS", "ignore_index", "num_groups"])
def preference_epilogue_kernel(PartM, PartS, PartT, Labels, CuSeqlens, Ref, Anchor, Targets,
                               Lse, Gtok, Logps, GroupLoss, Loss, Ticket,
                               N, SPLITS, ignore_index, num_groups,
                               ref_coef, anchor_coef, offset, target_center, target_div, scale, smoothing,
                               PAIRWISE: tl.constexpr, LOSS_KIND: tl.constexpr, USE_REF: tl.constexpr,
                               USE_ANCHOR: tl.constexpr, USE_TARGETS: tl.constexpr, LENGTH_NORM: tl.constexpr,
                               BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr):
    """Merge, sequence sums, objective, per-token upstream gradient and mean loss of one group (module docstring)."""
    grp = tl.program_id(0)
    if PAIRWISE:
        seq = grp * 2
    else:
        seq = grp
    lp, n_first = _sequence_logp(PartM, PartS, PartT, Labels, Lse, CuSeqlens, seq, N, SPLITS, ignore_index, BLOCK_T)
    tl.store(Logps + seq, lp)
    len_first = tl.maximum(n_first, 1.0)  # TRL's clamp(min=1); used only under LENGTH_NORM
    len_second = len_first
    if PAIRWISE:
        lp_rejected, n_second = _sequence_logp(PartM, PartS, PartT, Labels, Lse, CuSeqlens, seq + 1, N, SPLITS,
                                               ignore_index, BLOCK_T)
        tl.store(Logps + seq + 1, lp_rejected)
        len_second = tl.maximum(n_second, 1.0)
    if LENGTH_NORM:
        # inpo.objectives' order: each sequence's log-ratio divided by its length, then chosen − rejected.
        u = _sequence_ratio(lp, Ref, Anchor, seq, ref_coef, anchor_coef, USE_REF, USE_ANCHOR) / len_first
        if PAIRWISE:
            u = u - _sequence_ratio(lp_rejected, Ref, Anchor, seq + 1, ref_coef, anchor_coef, USE_REF,
                                    USE_ANCHOR) / len_second
    else:
        if PAIRWISE:
            u = lp - lp_rejected
        else:
            u = lp
        # The same order of operations as inpo.objectives: margin first, then the offset and the target.
        if USE_REF:
            u = u - ref_coef * _side_term(Ref, seq, PAIRWISE)
        if USE_ANCHOR:
            u = u - anchor_coef * _side_term(Anchor, seq, PAIRWISE)
    u = u - offset
    if USE_TARGETS:
        u = u - (tl.load(Targets + seq) - target_center) / target_div
    loss, dloss = _loss_and_slope(scale * u, scale, smoothing, LOSS_KIND)
    g = dloss / num_groups.to(tl.float32)
    g_first = g
    g_second = g
    if LENGTH_NORM:
        g_first = g / len_first
        g_second = g / len_second
    _write_token_grads(Labels, Gtok, CuSeqlens, seq, g_first, ignore_index, BLOCK_T)
    if PAIRWISE:
        _write_token_grads(Labels, Gtok, CuSeqlens, seq + 1, -g_second, ignore_index, BLOCK_T)

    _mean_by_last_program(GroupLoss, Loss, Ticket, grp, loss, num_groups, BLOCK_G)
