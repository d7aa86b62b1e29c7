"""Triton kernels of the fused LM head: per-token log-probs without [N, V] logits, and their gradients.

Forward (``head_fwd_kernel``), grid = (token blocks, vocabulary splits):
    each program owns BLOCK_N tokens and one contiguous slice of the vocabulary; it walks that slice in
    BLOCK_V tiles, computes each logits tile with ``tl.dot`` (K-loop over H in BLOCK_H steps, fp32
    accumulator), and keeps an online log-sum-exp (running max ``m`` and rescaled sum ``s``, fp32) plus the
    target logit, picked when the label falls inside the tile. It writes the partials ``m, s, t`` of its
    slice to [SPLITS, N] buffers, merged (a logsumexp over SPLITS rows) by the launcher for ``sequence_logps`` and
    by the epilogue kernel (``kernels/epilogue.py``) for ``preference_loss``. Splitting V
    keeps every SM busy when N / BLOCK_N is smaller than a few waves (N=8192, BLOCK_N=128 gives only 64
    token blocks for 132 SMs). A block whose labels are all ``ignore_index`` (prompt tokens) skips its GEMMs.

Backward (``head_bwd_kernel``), grid = (token blocks x vocabulary tiles), grouped for L2 reuse:
    each program recomputes its [BLOCK_N, BLOCK_V] logits tile (2·BN·BV·H FLOPs), forms
    dz = g · (onehot(label) − softmax) with the saved lse, then loops over H in BLOCK_H chunks doing both
    GEMMs, dX[n, h] += dz @ W[v, h] and dW[v, h] += dzᵀ @ X[n, h], and adds them with fp32 atomics into
    fp32 accumulators ([N, H] and [V, H]; the launcher casts to the input dtype). Total cost: forward 2NHV +
    backward 6NHV = 8NHV FLOPs, one recompute of the logits. The alternative, two kernels (dX over token
    blocks, dW over vocabulary blocks), needs a second recompute (10NHV) and a [BLOCK_N, H] register
    accumulator that does not fit for H = 4096, so it was not chosen. Atomic traffic is NVH·(1/BN + 1/BV)
    fp32 adds, i.e. 4·BN·BV/(BN+BV) = 256 FLOPs per atomic at BN = BV = 128.

Gradient filter (opt-in, ``FILTER``; off unless the caller passes ``grad_filter`` = b in (0, 1)): a tile is
    skipped -- both GEMMs, not dBias -- when it holds no target of a live row and every live row's softmax mass in
    it is at most b / T, T = cdiv(V, BLOCK_V) the number of vocabulary tiles. The tile's probabilities are already
    in registers (they form dz), so the test costs one row sum. Whatever subset of a row's T tiles is skipped,
    the row loses at most T · b/T = b of softmax mass in all, and the rule depends only on the tile's own values
    (no order, no shared state: deterministic). Per element, with S_n the skipped set of row n (Σ_{v∈S_n} p_nv ≤ b):
        |ΔdX[n, h]| = |g_n|·|Σ_{v∈S_n} p_nv·W[v, h]| ≤ b·|g_n|·max_v |W[v, h]|,
        Σ_v |ΔdW[v, h]| ≤ Σ_n |g_n|·Σ_{v∈S_n} p_nv·|X[n, h]| ≤ b·Σ_n |g_n|·|X[n, h]|,
    and dBias is exact (it needs no GEMM). Tiles whose tokens all have g = 0 (ignored tokens) are skipped
    without any error, filter or not. (The former per-entry rule -- skip when every p < eps -- had no per-row
    bound: a near-uniform row over V = 131072 has every p < 2^-16 and lost most of its mass.)

Chunked backward (``head_dz_kernel``, the deterministic mode): the same recompute, but dz is stored (input dtype)
    into a [chunk, V] buffer, each token block's dBias partial into its own row of a [blocks, V] fp32 buffer, and
    the launcher runs dX = dz·W and dW += dzᵀ·X as fp32-accumulating GEMMs per token chunk and sums the dBias
    rows. Same 8NHV FLOPs, no atomics anywhere, so the reduction order is fixed and two runs are bitwise equal;
    extra traffic 3·chunk·V·2 bytes per chunk and O(chunk·V) memory. No filter. Which backward is faster on a
    given GPU is an empirical question; ``python -m bench.head`` times both (inpo-triton vs
    inpo-triton-chunked).

Logit transform (``inpo/ops/transform.py``: a model's ``logit_scale`` and ``softcap``): every kernel applies it to
    each fp32 logits tile right after the GEMM and bias, ``z = softcap·tanh(logit_scale·raw / softcap)`` (the cap only
    when ``SOFTCAP``), so the forward's log-sum-exp and target pick, and the backward's softmax, see the model's
    logits; the backward multiplies dz by ``dz/draw = logit_scale·sech²(·)`` before its GEMMs and dBias. tanh and
    sech² come from one exp (``_softcap``: no libdevice, which the interpreter lacks). The filter's bounds above then
    carry a factor ``logit_scale`` (sech² <= 1). Cost with a cap: one more exp and a division per logit.

``DOT_FP32`` upcasts tiles to fp32 before ``tl.dot``: the Triton interpreter computes bf16 dots wrongly, so
the launcher sets it for bf16 under the interpreter only. ``DOT_PRECISION`` is "ieee" for fp32 inputs
(no silent TF32) and "tf32" otherwise (ignored for 16-bit inputs).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, Hd, stride_xn, stride_xh, stride_wv, stride_wh,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """fp32 logits of one [BLOCK_N, BLOCK_V] tile; masked rows/columns read zeros (finite, masked later)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    arange_h = tl.arange(0, BLOCK_H)
    # int64 row offsets: V·H exceeds 2^31 for large vocabularies and hidden sizes.
    x_rows = X + offs_n.to(tl.int64)[:, None] * stride_xn
    w_cols = W + offs_v.to(tl.int64)[None, :] * stride_wv
    for h0 in range(0, Hd, BLOCK_H):
        offs_h = h0 + arange_h
        mask_h = offs_h < Hd
        # int64 column offsets too: a transposed view (tied embeddings: stride_wh = V) puts H·V past 2^31.
        offs_h64 = offs_h.to(tl.int64)
        x = tl.load(x_rows + offs_h64[None, :] * stride_xh, mask=mask_n[:, None] & mask_h[None, :], other=0.0)
        # W^T tile loaded directly as [BLOCK_H, BLOCK_V].
        wt = tl.load(w_cols + offs_h64[:, None] * stride_wh, mask=mask_h[:, None] & mask_v[None, :], other=0.0)
        if DOT_FP32:
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + offs_v, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _softcap(u, cap):
    """(cap·tanh(u/cap), sech²(u/cap)) in fp32 from one exp of -2|y| <= 0 (no overflow; saturates to ±cap and 0).
    Below |y| = 1/8, where 1 - e would cancel, tanh is its odd Taylor series to y^7 (truncation < 4e-9 relative)."""
    y = u / cap
    a = tl.abs(y)
    e = tl.exp(-2.0 * a)
    y2 = y * y
    small = a * (1.0 + y2 * (-1.0 / 3.0 + y2 * (2.0 / 15.0 + y2 * (-17.0 / 315.0))))
    t = tl.where(a < 0.125, small, (1.0 - e) / (1.0 + e))
    t = tl.where(y < 0, -t, t)
    return cap * t, 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _transformed(raw, logit_scale, softcap, SOFTCAP: tl.constexpr):
    """The model's logits from the raw tile (inpo/ops/transform.py), for the forward."""
    u = raw * logit_scale
    if SOFTCAP:
        u, _ = _softcap(u, softcap)
    return u


@triton.jit(do_not_specialize=["N", "ignore_index", "SPLITS"])
def head_fwd_kernel(X, W, B, Labels, PartM, PartS, PartT,
                    N, V, Hd, stride_xn, stride_xh, stride_wv, stride_wh, ignore_index, SPLITS, logit_scale, softcap,
                    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Partial online log-sum-exp (m, s) and target logit t of one token block over one vocabulary split."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    lab = tl.load(Labels + offs_n, mask=mask_n, other=ignore_index).to(tl.int32)
    n_valid = tl.sum((lab != ignore_index).to(tl.int32), axis=0)

    tiles = tl.cdiv(V, BLOCK_V)
    tiles_per_split = tl.cdiv(tiles, SPLITS)
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, V)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    if n_valid > 0:  # a block of prompt tokens only needs no logits
        for v0 in range(v_begin, v_end, BLOCK_V):
            offs_v = v0 + tl.arange(0, BLOCK_V)
            mask_v = offs_v < v_end
            z = _logits_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, Hd, stride_xn, stride_xh, stride_wv,
                             stride_wh, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32, DOT_PRECISION)
            z = tl.where(mask_v[None, :], _transformed(z, logit_scale, softcap, SOFTCAP), float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            # m_new is -inf while a row has seen only -inf logits (a -inf bias over whole tiles: masked tokens);
            # shift by 0 there, since exp(-inf - -inf) is NaN. Such a row keeps s = 0 until a finite logit.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
            m = m_new
            t += tl.sum(tl.where(offs_v[None, :] == lab[:, None], z, 0.0), axis=1)
    out = split.to(tl.int64) * N + offs_n
    tl.store(PartM + out, m, mask=mask_n)
    tl.store(PartS + out, s, mask=mask_n)
    tl.store(PartT + out, t, mask=mask_n)


@triton.jit
def _softmax_grad_tile(X, W, B, Labels, Lse, DB, g, live, offs_n, offs_v, mask_n, mask_v, Hd, ignore_index,
                       stride_xn, stride_xh, stride_wv, stride_wh, logit_scale, softcap, HAS_BIAS: tl.constexpr,
                       SOFTCAP: tl.constexpr, COMPUTE_DB: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                       DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Recompute one logits tile and return (dz, p, is_target): dz = g · (onehot − softmax) · dz/draw in fp32 (the
    gradient w.r.t. the raw GEMM output, through the logit transform), zero on dead rows and masked columns; dBias
    is accumulated here (fp32 atomics) when COMPUTE_DB."""
    lab = tl.load(Labels + offs_n, mask=mask_n, other=ignore_index).to(tl.int32)
    lse = tl.load(Lse + offs_n, mask=mask_n, other=0.0)
    z = _logits_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, Hd, stride_xn, stride_xh, stride_wv,
                     stride_wh, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32, DOT_PRECISION)
    z = z * logit_scale
    if SOFTCAP:
        z, sech2 = _softcap(z, softcap)
    active = live[:, None] & mask_v[None, :]
    # Rows with g = 0 may carry a placeholder lse; `where` keeps their exp() (possibly inf) out of dz.
    p = tl.where(active, tl.exp(z - lse[:, None]), 0.0)
    is_target = (offs_v[None, :] == lab[:, None]) & active
    dz = tl.where(active, (g * logit_scale)[:, None] * (is_target.to(tl.float32) - p), 0.0)
    if SOFTCAP:
        dz = dz * sech2
    if COMPUTE_DB:
        tl.atomic_add(DB + offs_v, tl.sum(dz, axis=0), mask=mask_v, sem="relaxed")
    return dz, p, is_target


@triton.jit
def _grouped_tile(pid, N, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_N: tl.constexpr):
    """(token block, vocab tile) of program ``pid`` in grouped order: GROUP_N consecutive programs share one
    W tile, and GROUP_N hidden blocks stay in L2 while the vocabulary is swept."""
    num_n = tl.cdiv(N, BLOCK_N)
    num_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP_N * num_v
    first_n = (pid // per_group) * GROUP_N
    group_size = tl.minimum(num_n - first_n, GROUP_N)
    return first_n + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def _backward_tile(pid, Gtok, N, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_N: tl.constexpr):
    """Offsets, masks and upstream gradients of this program's backward tile; ``live`` marks rows with g != 0."""
    pid_n, pid_v = _grouped_tile(pid, N, V, BLOCK_N, BLOCK_V, GROUP_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_n = offs_n < N
    mask_v = offs_v < V
    g = tl.load(Gtok + offs_n, mask=mask_n, other=0.0)
    return offs_n, offs_v, mask_n, mask_v, g, g != 0.0


@triton.jit(do_not_specialize=["N", "ignore_index"])
def head_bwd_kernel(X, W, B, Labels, Lse, Gtok, DX, DW, DB, Skipped,
                    N, V, Hd, stride_xn, stride_xh, stride_wv, stride_wh, ignore_index, grad_filter, logit_scale,
                    softcap, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DW: tl.constexpr,
                    COMPUTE_DB: tl.constexpr, FILTER: tl.constexpr, COUNT_SKIPS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
                    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dX, dW (fp32 atomics) and dBias of one recomputed [BLOCK_N, BLOCK_V] logits tile.

    ``Skipped`` (int32 [2]): [0] tiles skipped by the filter, [1] tiles skipped because every token has
    g = 0; written only when COUNT_SKIPS (a debug switch).
    """
    offs_n, offs_v, mask_n, mask_v, g, live = _backward_tile(tl.program_id(0), Gtok, N, V, BLOCK_N, BLOCK_V, GROUP_N)
    if tl.sum(live.to(tl.int32), axis=0) == 0:
        if COUNT_SKIPS:
            tl.atomic_add(Skipped + 1, 1)
    else:
        dz, p, is_target = _softmax_grad_tile(X, W, B, Labels, Lse, DB, g, live, offs_n, offs_v, mask_n, mask_v, Hd,
                                              ignore_index, stride_xn, stride_xh, stride_wv, stride_wh, logit_scale,
                                              softcap, HAS_BIAS, SOFTCAP, COMPUTE_DB, BLOCK_N, BLOCK_V, BLOCK_H,
                                              DOT_FP32, DOT_PRECISION)
        skip = False
        if FILTER:
            # Per-row budget: each of the T vocabulary tiles may drop at most grad_filter / T of a row's mass.
            tile_budget = grad_filter / tl.cdiv(V, BLOCK_V)
            row_mass = tl.sum(p, axis=1)  # 0 on dead rows and masked columns
            skip = (tl.max(row_mass, axis=0) <= tile_budget) & (tl.sum(is_target.to(tl.int32)) == 0)
        if skip:
            if COUNT_SKIPS:
                tl.atomic_add(Skipped, 1)
        else:
            if DOT_FP32:
                dz_in = dz
            else:
                dz_in = dz.to(X.dtype.element_ty)  # GEMM in the input dtype, fp32 accumulation
            arange_h = tl.arange(0, BLOCK_H)
            x_rows = X + offs_n.to(tl.int64)[:, None] * stride_xn
            w_rows = W + offs_v.to(tl.int64)[:, None] * stride_wv
            dx_rows = DX + offs_n.to(tl.int64)[:, None] * Hd
            dw_rows = DW + offs_v.to(tl.int64)[:, None] * Hd
            for h0 in range(0, Hd, BLOCK_H):
                offs_h = h0 + arange_h
                mask_h = offs_h < Hd
                offs_h64 = offs_h.to(tl.int64)  # int64: see _logits_tile
                if COMPUTE_DX:
                    w = tl.load(w_rows + offs_h64[None, :] * stride_wh, mask=mask_v[:, None] & mask_h[None, :],
                                other=0.0)
                    if DOT_FP32:
                        w = w.to(tl.float32)
                    dx = tl.dot(dz_in, w, input_precision=DOT_PRECISION)
                    tl.atomic_add(dx_rows + offs_h[None, :], dx, mask=mask_n[:, None] & mask_h[None, :],
                                  sem="relaxed")
                if COMPUTE_DW:
                    x = tl.load(x_rows + offs_h64[None, :] * stride_xh, mask=mask_n[:, None] & mask_h[None, :],
                                other=0.0)
                    if DOT_FP32:
                        x = x.to(tl.float32)
                    dw = tl.dot(tl.trans(dz_in), x, input_precision=DOT_PRECISION)
                    tl.atomic_add(dw_rows + offs_h[None, :], dw, mask=mask_v[:, None] & mask_h[None, :],
                                  sem="relaxed")


@triton.jit(do_not_specialize=["N", "ignore_index"])
def head_dz_kernel(X, W, B, Labels, Lse, Gtok, DZ, DB,
                   N, V, Hd, stride_xn, stride_xh, stride_wv, stride_wh, stride_dzn, ignore_index, logit_scale, softcap,
                   HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, COMPUTE_DB: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
                   DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dz = g · (onehot − softmax) of one recomputed tile, stored in the input dtype (the "chunked" backward).

    The launcher runs it over a bounded chunk of tokens into a [chunk, V] buffer and hands the two gradient
    GEMMs to cuBLAS: no atomics, at the price of writing and re-reading the chunk's dz once. dBias: this token
    block's fp32 column sums go to row ``pid_n`` of ``DB`` ([token blocks, V]); the launcher sums the rows.
    """
    offs_n, offs_v, mask_n, mask_v, g, live = _backward_tile(tl.program_id(0), Gtok, N, V, BLOCK_N, BLOCK_V, GROUP_N)
    dz = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if tl.sum(live.to(tl.int32), axis=0) > 0:
        dz, p, is_target = _softmax_grad_tile(X, W, B, Labels, Lse, DB, g, live, offs_n, offs_v, mask_n, mask_v, Hd,
                                              ignore_index, stride_xn, stride_xh, stride_wv, stride_wh, logit_scale,
                                              softcap, HAS_BIAS, SOFTCAP, False, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32,
                                              DOT_PRECISION)
    # Always store: the buffers are reused across chunks, so all-ignored tiles must be written as zeros.
    dz_ptrs = DZ + offs_n.to(tl.int64)[:, None] * stride_dzn + offs_v[None, :]
    tl.store(dz_ptrs, dz.to(DZ.dtype.element_ty), mask=mask_n[:, None] & mask_v[None, :])
    if COMPUTE_DB:
        pid_n, _ = _grouped_tile(tl.program_id(0), N, V, BLOCK_N, BLOCK_V, GROUP_N)
        tl.store(DB + pid_n.to(tl.int64) * V + offs_v, tl.sum(dz, axis=0), mask=mask_v)
