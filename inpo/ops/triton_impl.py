"""Triton fused head: launchers and the ``torch.autograd.Function`` around ``inpo.kernels.head``.

Order of this file (kernel → launcher → autograd glue → public function): the kernels live in
``kernels/head.py`` (installed as ``inpo.kernels.head``; design and FLOP accounting are documented there),
the launch configs in ``kernels/configs.py``. Two entry points: ``sequence_logps`` (head forward, split merge and
segment sums in torch, head backward) and ``preference_loss`` (head forward, the fused epilogue of
``kernels/epilogue.py`` -- merge, segment sums, objective, per-token gradient, mean -- and head backward).

Options (``sequence_logps(..., **options)`` or ``params=HeadParams(...)``):
    grad_filter  ``None`` (default) = exact gradients. A float b in (0, 1): the opt-in gradient filter of the
                 atomic backward, a per-row budget of skipped softmax mass (each token loses at most b of its
                 softmax mass in all; rule and bound in ``kernels/head.py``). ``0`` = exact too. The chunked
                 (deterministic) backward has no filter and ignores it.
    deterministic ``None`` = follow ``torch.are_deterministic_algorithms_enabled()`` at call time; ``True``
                 selects the chunked backward (no atomics: fixed reduction order, two runs bitwise equal) and
                 an order-fixed per-sequence sum in the forward; ``False`` the atomic backward.
    fwd_config / bwd_config   ``KernelConfig`` overrides of the baked per-GPU-family defaults.
    splits       vocabulary splits of the forward grid (default: enough programs for ~4 waves).
    bwd_mode     ``None`` (default) = ``"chunked"`` when deterministic, else ``"atomic"``. ``"atomic"``: one fused
                 kernel, dX/dW by fp32 atomics (run-to-run nondeterministic in the last bits), O(N + V·H) extra
                 memory, supports the filter. ``"chunked"``: dz per token chunk into a [chunk_tokens, V] buffer,
                 then fp32-accumulating GEMMs (no atomics, no filter, O(chunk_tokens·V) extra memory).
                 ``"atomic"`` with ``deterministic=True`` is a ValueError.
    chunk_tokens tokens per chunk of the chunked backward (default: a ``_DZ_BUDGET_BYTES`` dz buffer).
    stats        a dict the backward fills with ``bwd_mode`` and, for the atomic backward, tile counters
                 (``tiles_total``, ``tiles_filtered``, ``tiles_ignored``); costs one host sync, meant for tests
                 and profiling.

Environment (read at call time):
    INPO_AUTOTUNE=1          autotune over ``kernels.configs.AUTOTUNE_FWD/BWD`` (CUDA only) instead of the baked
                             defaults; Triton caches the winner per (V, H, dtype) for the process.
    INPO_POISON_OUTPUTS=1    allocate kernel outputs with NaN instead of ``empty`` (the forward's partials, the
                             chunked backward's dz buffer and dX) so tests prove every element is written; the
                             atomic backward's accumulators are zero-initialised by design.

Offline check of the GPU build (no GPU needed): ``python -m inpo.kernels.compile_check``.

On CPU tensors the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``), which must be chosen
before triton is first imported: if nothing has imported triton yet this module sets the variable itself;
otherwise (triton imported without it, or the kernels already built for the GPU) a RuntimeError says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inpo.ops.checks import check_deterministic, check_grad_filter, check_head_inputs, check_side_input
from inpo.ops.gemm import addmm_fp32, mm_fp32
from inpo.ops.naive import segment_ids, segment_sum_ordered

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BWD_MODES = ("atomic", "chunked")
_DZ_BUDGET_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}  # chunked backward: size of the [chunk, V] dz buffer
_WAVES = 4  # forward: aim for this many waves of programs over the SMs when choosing vocabulary splits


@dataclass(frozen=True)
class HeadParams:
    """Options of the Triton head (see the module docstring). Frozen so it can be passed through autograd."""

    grad_filter: float | None = None
    deterministic: bool | None = None
    fwd_config: object | None = None  # kernels.configs.KernelConfig
    bwd_config: object | None = None
    splits: int | None = None
    bwd_mode: str | None = None
    chunk_tokens: int | None = None
    stats: dict | None = field(default=None, compare=False, hash=False)

    def __post_init__(self):
        check_grad_filter(self.grad_filter)
        check_deterministic(self.deterministic)
        if self.splits is not None and (not isinstance(self.splits, int) or self.splits < 1):
            raise ValueError(f"splits must be None or a positive int, got {self.splits!r}")
        if self.bwd_mode is not None and self.bwd_mode not in BWD_MODES:
            raise ValueError(f"bwd_mode must be None (auto) or one of {BWD_MODES}, got {self.bwd_mode!r}")
        if self.deterministic and self.bwd_mode == "atomic":
            raise ValueError("bwd_mode='atomic' adds gradients with atomics in no fixed order and cannot be "
                             "deterministic; with deterministic=True use bwd_mode=None or 'chunked'")
        if self.chunk_tokens is not None and (not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1):
            raise ValueError(f"chunk_tokens must be None or a positive int, got {self.chunk_tokens!r}")
        if self.stats is not None and not isinstance(self.stats, dict):
            raise TypeError(f"stats must be None or a dict to fill, got {type(self.stats).__name__}")

    def resolved(self) -> "HeadParams":
        """``deterministic`` fixed (None -> ``torch.are_deterministic_algorithms_enabled()`` now) and ``bwd_mode``
        chosen from it: what a forward call records for its backward."""
        det = torch.are_deterministic_algorithms_enabled() if self.deterministic is None else self.deterministic
        mode = self.bwd_mode or ("chunked" if det else "atomic")
        return dataclasses.replace(self, deterministic=det, bwd_mode=mode)


# ----------------------------------------------------------------------------------------------- kernels
def _is_interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def _kernels(device: torch.device):
    """The kernel module, built under the interpreter for CPU tensors (see the module docstring)."""
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"impl='triton' runs on CUDA or (interpreted) CPU tensors, got device {device}")
    if device.type == "cpu" and "inpo.kernels.head" not in sys.modules and not _flag("TRITON_INTERPRET"):
        # Triton fixes interpreter mode when it is first imported (setting the variable afterwards yields
        # "Cannot call @triton.jit'd outside of the scope of a kernel"), so it can only be chosen here if
        # nothing has imported triton yet.
        if "triton" in sys.modules:
            raise RuntimeError(
                "impl='triton' on CPU tensors needs the Triton interpreter, but triton was already imported "
                "without it. Set TRITON_INTERPRET=1 before importing triton (e.g. in the environment), or use "
                "impl='torch' on CPU."
            )
        os.environ["TRITON_INTERPRET"] = "1"
    from inpo.kernels import configs, head

    interpreted = _is_interpreted(head.head_fwd_kernel)
    if device.type == "cpu" and not interpreted:
        raise RuntimeError(
            "impl='triton' on CPU tensors needs the Triton interpreter, but inpo.kernels.head was already "
            "compiled for the GPU in this process. Set TRITON_INTERPRET=1 before importing triton/inpo, or "
            "use impl='torch' on CPU."
        )
    if device.type == "cuda" and interpreted:
        _warn_once("inpo.kernels.head was built under TRITON_INTERPRET=1: CUDA tensors run through the slow "
                   "interpreter. Unset TRITON_INTERPRET before importing inpo for compiled kernels.")
    return head, configs


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


@functools.lru_cache(maxsize=None)
def _autotuned(kernel, backward: bool):
    import triton

    from inpo.kernels.configs import AUTOTUNE_BWD, AUTOTUNE_FWD

    cfgs = [triton.Config({k: v for k, v in c.meta(backward=backward).items() if k.isupper()},
                          num_warps=c.num_warps, num_stages=c.num_stages)
            for c in (AUTOTUNE_BWD if backward else AUTOTUNE_FWD)]
    # Backward accumulates with atomics: every trial must start from zeroed accumulators.
    reset = ["DX", "DW", "DB", "Skipped"] if backward else None
    return triton.autotune(configs=cfgs, key=["V", "Hd"], reset_to_zero=reset)(kernel)


def _family(device: torch.device) -> str:
    from inpo.kernels.configs import device_family

    return device_family(torch.cuda.get_device_capability(device) if device.type == "cuda" else None)


def _on_device(device: torch.device):
    """Triton launches on the *current* CUDA device and its current stream, not on the tensors' device: make
    the tensors' device current for the launch (inputs on cuda:1 while cuda:0 is current would otherwise run on
    the wrong GPU with foreign pointers)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _poisoned(shape, *, dtype, device) -> Tensor:
    """``torch.empty`` filled with NaN: an element a kernel forgets to write shows up as NaN."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dot_flags(dtype: torch.dtype, interpreted: bool) -> dict:
    # The interpreter's bf16 tl.dot is wrong: upcast tiles there. fp32 inputs get exact (IEEE) dots, not TF32.
    return dict(DOT_FP32=interpreted and dtype == torch.bfloat16,
                DOT_PRECISION="ieee" if dtype == torch.float32 or (interpreted and dtype == torch.bfloat16) else "tf32")


def _default_splits(n_blocks: int, v_tiles: int, device: torch.device, interpreted: bool) -> int:
    if interpreted or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    # Enough programs for _WAVES waves, but every split keeps >= 4 vocabulary tiles to amortise its merge.
    return max(1, min(_cdiv(_WAVES * sms, n_blocks), v_tiles // 4))


# ---------------------------------------------------------------------------------------------- launchers
def _launch_config(hidden: Tensor, override, backward: bool):
    """(kernel module, interpreted?, config): ``override`` or the baked config of this GPU family and dtype."""
    head, configs = _kernels(hidden.device)
    interpreted = _is_interpreted(head.head_fwd_kernel)  # all kernels of the module share one mode
    family = "interpreter" if interpreted else _family(hidden.device)
    return head, interpreted, override or configs.baked(family, hidden.dtype == torch.float32)[int(backward)]


def head_forward_partials(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ignore_index: int,
                          params: HeadParams) -> Tensor:
    """The forward kernel's [3, SPLITS, N] fp32 partials (m, s, t) of each vocabulary split (needs N > 0)."""
    head, interpreted, cfg = _launch_config(hidden, params.fwd_config, backward=False)
    n, hd = hidden.shape
    v = weight.shape[0]
    splits = params.splits or _default_splits(_cdiv(n, cfg.block_n), _cdiv(v, cfg.block_v), hidden.device,
                                              interpreted)
    new = _poisoned if _flag("INPO_POISON_OUTPUTS") else torch.empty
    part = new((3, splits, n), dtype=torch.float32, device=hidden.device)
    args = (hidden, weight, bias if bias is not None else hidden, labels, part[0], part[1], part[2],
            n, v, hd, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), ignore_index, splits)
    flags = dict(HAS_BIAS=bias is not None, **_dot_flags(hidden.dtype, interpreted))
    with _on_device(hidden.device):
        if _flag("INPO_AUTOTUNE") and not interpreted and params.fwd_config is None:
            _autotuned(head.head_fwd_kernel, False)[lambda meta: (_cdiv(n, meta["BLOCK_N"]), splits)](*args, **flags)
        else:
            head.head_fwd_kernel[(_cdiv(n, cfg.block_n), splits)](*args, **flags, **cfg.meta(backward=False))
    return part


def head_forward(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ignore_index: int,
                 params: HeadParams) -> tuple[Tensor, Tensor]:
    """Per-token log-probs [N] fp32 (0 where ignored) and log-sum-exp [N] fp32 (0 where ignored)."""
    part_m, part_s, part_t = head_forward_partials(hidden, weight, bias, labels, ignore_index, params)
    valid = labels != ignore_index
    # Merge the splits; an empty split (or an all-ignored block) has m = -inf, s = 0 and drops out.
    lse = torch.where(valid, torch.logsumexp(part_m + part_s.log(), dim=0), 0.0)
    tok = torch.where(valid, part_t.sum(dim=0) - lse, 0.0)
    return tok, lse


def head_backward(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, lse: Tensor, g_tok: Tensor,
                  ignore_index: int, params: HeadParams, need: tuple[bool, bool, bool]):
    """fp32 gradients (dHidden, dWeight, dBias) -- None where not needed -- for per-token upstream ``g_tok``."""
    head, interpreted, cfg = _launch_config(hidden, params.bwd_config, backward=True)
    n, hd = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    need_x, need_w, need_b = need
    dx = torch.zeros(n, hd, dtype=torch.float32, device=dev) if need_x else None
    dw = torch.zeros(v, hd, dtype=torch.float32, device=dev) if need_w else None
    db = torch.zeros(v, dtype=torch.float32, device=dev) if need_b else None
    skipped = torch.zeros(2, dtype=torch.int32, device=dev)
    budget = float(params.grad_filter or 0.0)
    dummy = lambda: torch.zeros(1, dtype=torch.float32, device=dev)  # noqa: E731 -- never read (constexpr off)
    args = (hidden, weight, bias if bias is not None else hidden, labels, lse, g_tok,
            dx if need_x else dummy(), dw if need_w else dummy(), db if need_b else dummy(), skipped,
            n, v, hd, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), ignore_index, budget)
    flags = dict(HAS_BIAS=bias is not None, COMPUTE_DX=need_x, COMPUTE_DW=need_w, COMPUTE_DB=need_b,
                 FILTER=budget > 0, COUNT_SKIPS=params.stats is not None, **_dot_flags(hidden.dtype, interpreted))
    with _on_device(dev):
        if _flag("INPO_AUTOTUNE") and not interpreted and params.bwd_config is None:
            grid = lambda meta: (_cdiv(n, meta["BLOCK_N"]) * _cdiv(v, meta["BLOCK_V"]),)  # noqa: E731
            _autotuned(head.head_bwd_kernel, True)[grid](*args, **flags)
            cfg = None
        else:
            head.head_bwd_kernel[(_cdiv(n, cfg.block_n) * _cdiv(v, cfg.block_v),)](*args, **flags,
                                                                                   **cfg.meta(backward=True))
    if params.stats is not None:
        if cfg is None:  # autotuned: the tile count belongs to whichever config won
            total = None
        else:
            total = _cdiv(n, cfg.block_n) * _cdiv(v, cfg.block_v)
        filtered, ignored = (int(x) for x in skipped.tolist())
        params.stats.update(bwd_mode="atomic", tiles_total=total, tiles_filtered=filtered, tiles_ignored=ignored,
                            grad_filter=budget)
    return dx, dw, db


def head_backward_chunked(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, lse: Tensor,
                          g_tok: Tensor, ignore_index: int, params: HeadParams, need: tuple[bool, bool, bool]):
    """Like :func:`head_backward` (``bwd_mode="chunked"``, the deterministic backward): dz per token chunk, then
    fp32-accumulating GEMMs (:mod:`inpo.ops.gemm`); no atomics, so the result is bitwise reproducible.

    Returns fp32 dHidden (each token belongs to one chunk: one GEMM, no accumulation across chunks), dWeight
    (chunks added in order) and dBias (per-token-block partial rows, summed in order).
    """
    head, interpreted, cfg = _launch_config(hidden, params.bwd_config, backward=True)
    n, hd = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    need_x, need_w, need_b = need
    budget = _DZ_BUDGET_BYTES["cuda" if dev.type == "cuda" else "cpu"]
    chunk = params.chunk_tokens or max(cfg.block_n, budget // (v * hidden.element_size()) // cfg.block_n * cfg.block_n)
    chunk = min(chunk, n)
    new = _poisoned if _flag("INPO_POISON_OUTPUTS") else torch.empty
    dz_buf = new((chunk, v), dtype=hidden.dtype, device=dev)
    dx = new((n, hd), dtype=torch.float32, device=dev) if need_x else None
    dw = torch.zeros(v, hd, dtype=torch.float32, device=dev) if need_w else None
    db = torch.zeros(v, dtype=torch.float32, device=dev) if need_b else None
    db_part = new((_cdiv(chunk, cfg.block_n), v), dtype=torch.float32, device=dev) if need_b else None
    flags = dict(HAS_BIAS=bias is not None, COMPUTE_DB=need_b, **_dot_flags(hidden.dtype, interpreted))
    meta = cfg.meta(backward=True)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        x, dz = hidden[c0:c1], dz_buf[:c1 - c0]
        grid = (_cdiv(c1 - c0, cfg.block_n) * _cdiv(v, cfg.block_v),)
        with _on_device(dev):
            head.head_dz_kernel[grid](x, weight, bias if bias is not None else hidden, labels[c0:c1], lse[c0:c1],
                                      g_tok[c0:c1], dz, db_part if need_b else lse, c1 - c0, v, hd, x.stride(0),
                                      x.stride(1), weight.stride(0), weight.stride(1), dz.stride(0), ignore_index,
                                      **flags, **meta)
        if need_x:
            dx[c0:c1] = mm_fp32(dz, weight)
        if need_w:
            addmm_fp32(dw, dz.t(), x)
        if need_b:
            db += db_part[:_cdiv(c1 - c0, cfg.block_n)].sum(dim=0)
    if params.stats is not None:
        params.stats.update(bwd_mode="chunked", chunk_tokens=chunk)
    return dx, dw, db


_EPILOGUE_BLOCK_T = 256  # tokens per step of the epilogue's walk over a sequence
_EPILOGUE_BLOCK_G = 1024  # group losses per step of the last program's mean


def preference_epilogue(part: Tensor, labels: Tensor, cu_seqlens: Tensor, spec, ref: Tensor | None,
                        anchor: Tensor | None, targets: Tensor | None, ignore_index: int):
    """One launch of ``inpo.kernels.epilogue``: the forward's partials -> (loss, logps, lse, g_tok).

    ``part``: [3, SPLITS, N] fp32 from :func:`head_forward_partials`; ``spec``: the objective's
    :class:`inpo.objectives.KernelSpec`; ``ref``/``anchor``/``targets``: [S] fp32 or None. Returns the 0-dim mean
    loss, the [S] sequence log-probs, the [N] lse the backward needs and the [N] per-token gradient of the loss
    w.r.t. each token's log-prob (what the backward kernels consume, times the loss's upstream gradient).
    """
    _kernels(labels.device)  # interpreter / device checks, shared with the head's kernels
    from inpo.kernels import epilogue

    splits, n = part.shape[1], part.shape[2]
    s = cu_seqlens.shape[0] - 1
    groups = s // 2 if spec.pairwise else s
    dev = labels.device
    new = _poisoned if _flag("INPO_POISON_OUTPUTS") else torch.empty
    lse, g_tok = new((2, n), dtype=torch.float32, device=dev)
    logps = new((s,), dtype=torch.float32, device=dev)
    group_loss = new((groups,), dtype=torch.float32, device=dev)
    loss = new((), dtype=torch.float32, device=dev)
    ticket = torch.zeros(1, dtype=torch.int32, device=dev)  # the "last program reduces" counter starts at 0
    side = [t.contiguous() if t is not None else logps for t in (ref, anchor, targets)]  # logps: never read
    with _on_device(dev):
        epilogue.preference_epilogue_kernel[(groups,)](
            part[0], part[1], part[2], labels, cu_seqlens, *side, lse, g_tok, logps, group_loss, loss, ticket,
            n, splits, ignore_index, groups,
            spec.ref_coef, spec.anchor_coef, spec.offset, spec.target_center, spec.target_div, spec.scale,
            spec.label_smoothing,
            PAIRWISE=spec.pairwise, LOSS_KIND=_LOSS_KIND[spec.loss], USE_REF=spec.uses_ref,
            USE_ANCHOR=spec.uses_anchor, USE_TARGETS=spec.uses_targets, LENGTH_NORM=spec.length_normalize,
            BLOCK_T=_EPILOGUE_BLOCK_T, BLOCK_G=_EPILOGUE_BLOCK_G, num_warps=4)
    return loss, logps, lse, g_tok


_LOSS_KIND = {"squared": 0, "logsigmoid": 1}  # kernels/epilogue.py: LOSS_SQUARED, LOSS_LOGSIGMOID


# ----------------------------------------------------------------------------------------- autograd glue
def _input_grads(ctx, hidden, weight, bias, labels, lse, g_tok):
    """(dHidden, dWeight, dBias) in the inputs' dtypes for per-token upstream ``g_tok``; None where not needed."""
    need = tuple(ctx.needs_input_grad[:3])
    need = (need[0], need[1], need[2] and bias is not None)
    if hidden.shape[0] == 0:
        dx, dw, db = (torch.zeros(t.shape, dtype=torch.float32, device=t.device) if (t is not None and k) else None
                      for t, k in zip((hidden, weight, bias), need))
    else:
        backward = head_backward_chunked if ctx.params.bwd_mode == "chunked" else head_backward
        dx, dw, db = backward(hidden, weight, bias, labels, lse, g_tok, ctx.ignore_index, ctx.params, need)
    # Rebinding frees each fp32 accumulator before the next cast: the peak holds one fp32 + one low-precision copy.
    dx = None if dx is None else dx.to(hidden.dtype)
    dw = None if dw is None else dw.to(weight.dtype)
    db = None if db is None else db.to(bias.dtype)
    return dx, dw, db


class TritonHeadFunction(torch.autograd.Function):
    """[S] summed log-probs; backward recomputes logits tiles (8NHV FLOPs in all)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, cu_seqlens, ignore_index, params):
        params = params.resolved()  # idempotent; fixes deterministic/bwd_mode for callers that pass raw params
        n = hidden.shape[0]
        s = cu_seqlens.numel() - 1
        seg = segment_ids(cu_seqlens, n)
        if n == 0:
            lse = torch.zeros(0, dtype=torch.float32, device=hidden.device)
            out = torch.zeros(s, dtype=torch.float32, device=hidden.device)
        else:
            tok, lse = head_forward(hidden, weight, bias, labels, ignore_index, params)
            if params.deterministic:
                out = segment_sum_ordered(tok, cu_seqlens)
            else:
                out = torch.zeros(s, dtype=torch.float32, device=hidden.device).index_add_(0, seg, tok)
        ctx.save_for_backward(hidden, weight, bias, labels, seg, lse)
        ctx.ignore_index, ctx.params = ignore_index, params
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, seg, lse = ctx.saved_tensors
        g_tok = None
        if hidden.shape[0] > 0:
            g_tok = torch.where(labels != ctx.ignore_index, grad_out.float()[seg], 0.0).contiguous()
        return *_input_grads(ctx, hidden, weight, bias, labels, lse, g_tok), None, None, None, None


class TritonPreferenceLossFunction(torch.autograd.Function):
    """(mean loss, [S] log-probs): head forward + fused epilogue; the backward is the head's backward alone.

    The epilogue already wrote the per-token gradient of the loss (``g_tok``), so the backward only scales it by
    the loss's upstream gradient (one elementwise op, the same for every objective) and runs the head backward.
    The log-probs output is not differentiable; ref/anchor/targets are constants.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, cu_seqlens, ref, anchor, targets, spec, ignore_index, params):
        params = params.resolved()  # as TritonHeadFunction: deterministic/bwd_mode fixed for the backward
        n = hidden.shape[0]
        if n == 0:
            part = torch.empty(3, 1, 0, dtype=torch.float32, device=hidden.device)
        else:
            part = head_forward_partials(hidden, weight, bias, labels, ignore_index, params)
        loss, logps, lse, g_tok = preference_epilogue(part, labels, cu_seqlens, spec, ref, anchor, targets,
                                                      ignore_index)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, g_tok)
        ctx.ignore_index, ctx.params = ignore_index, params
        ctx.mark_non_differentiable(logps)
        return loss, logps

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps):
        hidden, weight, bias, labels, lse, g_tok = ctx.saved_tensors
        g_tok = g_tok * grad_loss.float()  # not in place: a second backward (retain_graph) reuses the saved g_tok
        return (*_input_grads(ctx, hidden, weight, bias, labels, lse, g_tok),) + (None,) * 8


# -------------------------------------------------------------------------------------------- public API
def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, bias: Tensor | None = None,
                   *, ignore_index: int = -100, params: HeadParams | None = None, **options) -> Tensor:
    """[S] fp32 summed log-probs of packed sequences with the fused Triton head.

    Same contract as :func:`inpo.ops.sequence_logps` (shapes, ``ignore_index``, differentiable w.r.t.
    hidden, weight, bias); ``options`` are :class:`HeadParams` fields (``grad_filter``, ``deterministic``,
    ``fwd_config``, ``bwd_config``, ``splits``, ``bwd_mode``, ``chunk_tokens``, ``stats``) and override ``params``.
    """
    params, labels, bias = _prepare(hidden, weight, labels, cu_seqlens, bias, ignore_index, params, options)
    return TritonHeadFunction.apply(hidden, weight, bias, labels, cu_seqlens, int(ignore_index), params)


def preference_loss(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, objective, *,
                    ref_logps: Tensor | None = None, anchor_logps: Tensor | None = None,
                    targets: Tensor | None = None, bias: Tensor | None = None, ignore_index: int = -100,
                    params: HeadParams | None = None, **options) -> tuple[Tensor, Tensor]:
    """(0-dim fp32 mean loss, [S] fp32 log-probs, not differentiable) of ``objective`` with the fused head.

    Three kernel launches per forward + backward, whatever the objective: the head's forward, the epilogue
    (``inpo.kernels.epilogue``: split merge, sequence sums, objective, per-token gradient, mean) and the head's
    backward. ``ref_logps``/``anchor_logps``/``targets`` are [S] constants (no gradient flows into them);
    ``options`` as in :func:`sequence_logps`.
    """
    if not callable(getattr(objective, "kernel_spec", None)):
        raise TypeError(f"objective must be an inpo.objectives.Objective (INPO, ONPO, IPO, DPO, SPPO), got "
                        f"{type(objective).__name__}")
    spec = objective.kernel_spec()
    if spec is None:
        raise ValueError(f"{objective!r} has no fused-epilogue kernel spec (kernel_spec() is None); "
                         f"inpo.ops.preference_loss runs it as the Triton head's log-probs + its Python loss")
    params, labels, bias = _prepare(hidden, weight, labels, cu_seqlens, bias, ignore_index, params, options)
    s = cu_seqlens.shape[0] - 1
    side = [check_side_input(name, t, s, hidden.device)  # [S] fp32, detached, on hidden's device
            for name, t in (("ref_logps", ref_logps), ("anchor_logps", anchor_logps), ("targets", targets))]
    meta = torch.empty(s, device="meta")  # the kernel counts the lengths itself
    objective.check_inputs(meta, *(None if t is None else t.to("meta") for t in side),
                           lengths=meta if objective.needs_lengths else None)
    side = [None if t is None else t.contiguous() for t in side]
    return TritonPreferenceLossFunction.apply(hidden, weight, bias, labels, cu_seqlens.contiguous(), *side,
                                              spec, int(ignore_index), params)


def _prepare(hidden, weight, labels, cu_seqlens, bias, ignore_index, params, options):
    """Shared argument handling of the public functions: (HeadParams, contiguous labels, contiguous bias)."""
    unknown = set(options) - {f.name for f in dataclasses.fields(HeadParams)}
    if unknown:
        raise TypeError(f"unknown Triton head option(s) {sorted(unknown)}; expected fields of HeadParams: "
                        f"{[f.name for f in dataclasses.fields(HeadParams)]}")
    params = dataclasses.replace(params or HeadParams(), **options).resolved()
    check_head_inputs(hidden, weight, labels, cu_seqlens, bias, ignore_index=ignore_index, check_values=False)
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"impl='triton' supports fp32/fp16/bf16 inputs, got {hidden.dtype}; "
                        "use impl='naive' or impl='torch' for fp64")
    if bias is not None and bias.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"bias must be fp32/fp16/bf16 for impl='triton', got {bias.dtype}")
    labels = labels.contiguous()  # hidden/weight strides go to the kernels; labels are tiny
    bias = bias.contiguous() if bias is not None else None
    return params, labels, bias
