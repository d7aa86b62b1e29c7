"""Fused-head microbenchmark: forward + backward of per-sequence log-probs, per implementation.

For each (shape, inputs) it measures fwd+bwd time (``triton.testing.do_bench`` on CUDA after a warm-up call:
median and 20/80% quantiles; wall clock on CPU), TFLOP/s at the useful 6·N·H·V, peak extra memory, and
the **GEMM floor** of the same run: the three cuBLAS GEMMs of the same shapes (forward logits [N,V] = X·Wᵀ,
dX = dZ·W, dW = dZᵀ·X), timed one by one and summed. ``floor_ratio`` = fwd_bwd_ms / floor_ms (1.0 = as fast
as the GEMMs alone; the fused recompute design does 8NHV, so ~1.33 is its compute-bound ideal).

Implementations: ``inpo-triton`` (fused atomic backward, exact: ``grad_filter=None``, the default),
``inpo-triton-filter`` (the same with the opt-in gradient filter, ``grad_filter=--grad-filter``; passed only when
``sequence_logps`` takes the argument, else skipped with a note), ``inpo-triton-chunked`` (``bwd_mode="chunked"``),
``inpo-torch``, ``inpo-native`` (when built), ``naive``, ``torch-compile``
(torch.compile of the chunked torch impl), ``liger`` (LigerFusedLinearCrossEntropyLoss), ``cce``
(cut_cross_entropy.linear_cross_entropy, reduction="none", plus a segment-sum epilogue), ``gemm-floor``.
Liger and CCE are imported through :mod:`inpo._optional` and skipped with a note when missing. Both run with
reduction="none" plus a segment-sum epilogue, so every impl computes the same per-sequence log-probs under the
same per-sequence upstream gradient (Liger >= 0.8.5 recomputes its logits in the backward for that, as we do;
its reduction="sum" fast path forms gradients in the forward and could not weight sequences).

Inputs: ``flat`` (random hidden states: near-uniform softmax, entropy ≈ log V) and ``peaked`` (hidden states
aligned with their target's weight row, scaled by bisection so the mean token entropy is ≈ 1.5 nats, like a
trained LM's). The measured mean entropy is recorded.

Results are appended to ``bench/results/head-<device_slug>.jsonl`` on CUDA (``--out`` overrides). On CPU the
default is a small smoke run (N=256 H=64 V=1000 fp32) that only prints unless ``--out`` is given
(``head-cpu.jsonl`` belongs to the native CPU head's bench).

    python -m bench.head                                  # the full GPU run
    python -m bench.head --impls inpo-triton,gemm-floor --inputs peaked --shapes 8192x4096x128256
    python -m bench.head --smoke --out /tmp/head.jsonl    # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.lib.outputs import output_problem
from bench.lib.timing import is_oom, measure, release_memory
from inpo._optional import available, require
from inpo.utils.record import append_jsonl, device_slug, environment_info

SHAPES = ((16384, 2048, 128256), (8192, 4096, 128256))
SMOKE_SHAPE = (256, 64, 1000)
IMPLS = ("inpo-triton", "inpo-triton-filter", "inpo-triton-chunked", "inpo-torch", "inpo-native", "naive", "torch-compile", "liger", "cce",
         "gemm-floor")
SMOKE_IMPLS = ("naive", "inpo-torch", "inpo-triton", "gemm-floor")
INPUTS = ("flat", "peaked")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PEAKED_ENTROPY = 1.5  # nats: target mean token entropy of the peaked inputs
SEQ_LEN = 512  # packed sequence length (the last one takes the remainder)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GRAD_FILTER = 2**-7  # opt-in per-row budget timed by "inpo-triton-filter": skips ~70% of peaked tiles (README table)


def accepts_grad_filter() -> bool:
    """Whether the public ``sequence_logps`` has the exact-by-default API (a ``grad_filter`` keyword): then
    ``inpo-triton`` is exact and ``inpo-triton-filter`` can opt in."""
    import inspect

    from inpo.ops import sequence_logps

    return "grad_filter" in inspect.signature(sequence_logps).parameters


@dataclass
class Problem:
    hidden: torch.Tensor
    weight: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor
    seg: torch.Tensor  # sequence id per token
    upstream: torch.Tensor  # [S] fixed upstream gradient of the per-sequence log-probs
    entropy: float


# ------------------------------------------------------------------------------------------------- inputs
@torch.no_grad()
def mean_entropy(hidden: torch.Tensor, weight: torch.Tensor, chunk: int = 1024) -> float:
    """Mean softmax entropy (nats) of the tokens' logits, computed in fp32 over token chunks (never [N, V])."""
    total = 0.0
    w = weight.float()
    for c0 in range(0, hidden.shape[0], chunk):
        logp = torch.log_softmax(hidden[c0:c0 + chunk].float() @ w.t(), dim=1)
        total += float(-(logp.exp() * logp).sum(dim=1).sum())
    return total / max(1, hidden.shape[0])


def _peaked_hidden(weight: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, target: float) -> torch.Tensor:
    """hidden = alpha · w_label / |w_label|² + noise; alpha bisected so 256 sample tokens have ``target`` entropy."""
    w = weight.float()
    direction = w[labels] / w[labels].pow(2).sum(dim=1, keepdim=True)  # gives the target logit exactly alpha
    sample = slice(0, min(256, labels.numel()))
    lo, hi = 0.0, 80.0
    for _ in range(40):  # entropy falls monotonically as alpha grows
        alpha = (lo + hi) / 2
        h = alpha * direction[sample] + noise[sample].float()
        if mean_entropy(h, w) > target:
            lo = alpha
        else:
            hi = alpha
    return ((lo + hi) / 2 * direction + noise.float()).to(weight.dtype)


def make_problem(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device, inputs: str,
                 seed: int = 0) -> Problem:
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    g = torch.Generator(device=device).manual_seed(seed)
    weight = (torch.randn(v, h, device=device, generator=g) / math.sqrt(h)).to(dtype)
    labels = torch.randint(0, v, (n,), device=device, generator=g)
    noise = torch.randn(n, h, device=device, generator=g)
    if inputs == "flat":
        hidden = noise.to(dtype)
    else:
        # Noise of std 2 per dim gives off-target logits of std ~2 (a trained LM's spread), then the target's
        # logit is raised until the mean entropy is PEAKED_ENTROPY.
        hidden = _peaked_hidden(weight, labels, noise * 2.0, PEAKED_ENTROPY)
    lengths = [SEQ_LEN] * (n // SEQ_LEN) + ([n % SEQ_LEN] if n % SEQ_LEN else [])
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    cu = cu.to(device)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                  torch.tensor(lengths, device=device))
    upstream = torch.randn(len(lengths), device=device, generator=g)
    return Problem(hidden, weight, labels, cu, seg, upstream, mean_entropy(hidden, weight))


# ------------------------------------------------------------------------------------------------ runners
def _segment_sum(tok: torch.Tensor, p: Problem) -> torch.Tensor:
    return torch.zeros(p.upstream.numel(), dtype=torch.float32, device=tok.device).index_add(0, p.seg, tok.float())


def _head_runner(impl: str, grad_filter: float = GRAD_FILTER) -> Callable[[Problem, torch.Tensor, torch.Tensor],
                                                                           torch.Tensor]:
    """(problem, hidden leaf, weight leaf) -> [S] log-probs, for each implementation."""
    if impl == "inpo-triton-filter":
        from inpo.ops import sequence_logps

        return lambda p, x, w: sequence_logps(x, w, p.labels, p.cu_seqlens, impl="triton", check_values=False,
                                              grad_filter=grad_filter)
    if impl in ("inpo-triton", "inpo-torch", "inpo-native", "naive"):
        from inpo.ops import sequence_logps

        name = impl.removeprefix("inpo-")
        return lambda p, x, w: sequence_logps(x, w, p.labels, p.cu_seqlens, impl=name, check_values=False)
    if impl == "inpo-triton-chunked":
        from inpo.ops import triton_impl

        return lambda p, x, w: triton_impl.sequence_logps(x, w, p.labels, p.cu_seqlens, bwd_mode="chunked")
    if impl == "torch-compile":
        from inpo.ops import torch_impl

        compiled = torch.compile(torch_impl.sequence_logps)
        return lambda p, x, w: compiled(x, w, p.labels, p.cu_seqlens)
    if impl == "liger":
        liger = require("liger_kernel.transformers")

        # reduction="none" + a segment sum, like CCE: the task is per-sequence log-probs under an arbitrary
        # upstream gradient. Liger >= 0.8.5 then recomputes the logits in its backward to fold the per-token
        # gradient in (as our fused head must); reduction="sum" would time its cheaper forward-only-gradients path,
        # which cannot weight sequences differently (see the module docstring).
        loss_fn = liger.LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="none")
        return lambda p, x, w: _segment_sum(-loss_fn(w, x, p.labels), p)
    if impl == "cce":
        linear_cross_entropy = require("cut_cross_entropy").linear_cross_entropy

        return lambda p, x, w: _segment_sum(-linear_cross_entropy(x, w, p.labels, ignore_index=-100,
                                                                  reduction="none"), p)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def unavailable_reason(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    if impl == "inpo-triton-filter" and not accepts_grad_filter():
        return "sequence_logps takes no grad_filter argument (the exact-by-default head API is not in this tree)"
    if impl == "liger" and not available("liger_kernel"):
        return "liger-kernel not installed"
    if impl == "cce" and not available("cut_cross_entropy"):
        return "cut-cross-entropy not installed"
    if impl == "cce" and device.type != "cuda":
        return "CCE's Triton path needs CUDA"
    if impl == "liger" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Liger needs CUDA or TRITON_INTERPRET=1"
    if impl == "inpo-native":
        from inpo.ops.head import native_available

        if device.type != "cpu" or not native_available():
            return "native CPU head not built (or not a CPU run)"
    return None


def fwd_bwd_fn(impl: str, p: Problem, grad_filter: float = GRAD_FILTER) -> Callable[[], None]:
    """A closure running one forward + backward (grads reset each call so nothing accumulates)."""
    run = _head_runner(impl, grad_filter) if impl == "inpo-triton-filter" else _head_runner(impl)
    x = p.hidden.detach().requires_grad_(True)
    w = p.weight.detach().requires_grad_(True)

    def step():
        x.grad = w.grad = None
        out = run(p, x, w)
        out.backward(p.upstream if out.dim() else None)  # 0-dim: a summed loss

    return step


# Relative error of an implementation's sequence log-probs against the fp32 reference above which a record is
# flagged: 16-bit inputs are the same values in both (the reference upcasts them), so only accumulation order and
# precision differ -- a wrong tile, a missed split or a bad mask gives errors orders of magnitude larger.
VALUE_RTOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}


@torch.no_grad()
def reference_logps(p: Problem) -> torch.Tensor:
    """[S] fp32 sequence log-probs of the problem's (already rounded) inputs, upcast: the check every impl's
    forward is held to (``value_err`` in each record). Chunked, so it never holds [N, V] logits."""
    from inpo.ops import torch_impl

    return torch_impl.sequence_logps(p.hidden.float(), p.weight.float(), p.labels, p.cu_seqlens).float()


def value_error(impl: str, p: Problem, ref: torch.Tensor) -> float:
    """max |out − ref| / max(|ref|, 1) of one forward of ``impl`` (a 0-dim output against ref.sum())."""
    run = _head_runner(impl)
    x = p.hidden.detach().requires_grad_(True)  # Liger forms its gradients inside the forward: leaves as timed
    w = p.weight.detach().requires_grad_(True)
    out = run(p, x, w).detach().float()
    want = ref.sum() if out.dim() == 0 else ref
    return float(((out - want).abs() / want.abs().clamp_min(1.0)).max())


def gemm_floor(p: Problem, timer) -> dict:
    """The three GEMMs of the head at the same shapes and dtype, timed separately: {name: ms}."""
    x, w = p.hidden, p.weight
    z = x @ w.t()  # [N, V] in the input dtype, also the dZ operand of the backward GEMMs
    gemms = {"logits": lambda: x @ w.t(), "dhidden": lambda: z @ w, "dweight": lambda: z.t() @ x}
    return {k: timer(fn).median_ms for k, fn in gemms.items()}  # z is freed on return


# -------------------------------------------------------------------------------------------------- driver
def _timer(device: torch.device, smoke: bool):
    if device.type == "cuda":
        return lambda fn: measure(fn, device=device, warmup=10, min_time_s=0.5, method="do_bench")
    return lambda fn: measure(fn, device=device, warmup=1, reps=2 if smoke else 3, method="wall")


def _peak_extra_bytes(fn: Callable[[], None], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def gradient_mode(impl: str, grad_filter: float) -> dict:
    """What the record says about the backward's exactness: ``grad_filter`` (None = exact) and ``exact``."""
    if impl == "inpo-triton-filter":
        return {"grad_filter": grad_filter, "exact": False}
    if impl in ("inpo-triton", "inpo-triton-chunked"):
        # Before the exact-by-default API the atomic backward filtered fp16/bf16 by default.
        exact = accepts_grad_filter() or impl == "inpo-triton-chunked"
        return {"grad_filter": None, "exact": exact}
    if impl == "cce":
        return {"grad_filter": "cce-default", "exact": False}
    return {"grad_filter": None, "exact": True}


def run(shapes, impls, inputs_list, dtype: torch.dtype, device: torch.device, *, smoke: bool = False,
        out: Path | None = None, log: Callable[[str], None] = print, grad_filter: float = GRAD_FILTER) -> list[dict]:
    """Benchmark every (shape, inputs, impl); append each record to ``out`` as soon as it exists."""
    env = environment_info()
    env["autotune"] = os.environ.get("INPO_AUTOTUNE", "0")
    timer = _timer(device, smoke)
    dtype_name = next(k for k, d in DTYPES.items() if d == dtype)
    records = []
    for n, h, v in shapes:
        for inputs in inputs_list:
            p = make_problem(n, h, v, dtype, device, inputs)
            ref = None
            base = dict(env, N=n, H=h, V=v, dtype=dtype_name, inputs=inputs, entropy=round(p.entropy, 4),
                        flops_useful=6 * n * h * v, smoke=smoke)
            try:
                floor_parts = gemm_floor(p, timer)
                floor_ms = sum(floor_parts.values())
            except Exception as exc:  # noqa: BLE001 -- a missing floor must not lose the other records
                floor_parts, floor_ms = {}, None
                log(f"gemm floor failed at N={n} H={h} V={v}: {type(exc).__name__}: {exc}")
            if floor_ms is None:
                release_memory(device)  # after the except block: its traceback no longer pins the failed tensors
            for impl in impls:
                rec = dict(base, impl=impl, floor_ms=floor_ms, floor_gemm_ms=floor_parts,
                           **gradient_mode(impl, grad_filter))
                reason = unavailable_reason(impl, device)
                if reason:
                    rec.update(fwd_bwd_ms=None, floor_ratio=None, tflops=None, peak_mem_bytes=None, skipped=reason)
                else:
                    try:
                        if impl == "gemm-floor":
                            if floor_ms is None:
                                raise RuntimeError("GEMM floor could not be measured")
                            timing = dict(fwd_bwd_ms=floor_ms, p20_ms=None, p80_ms=None, method="sum-of-medians")
                            peak = None
                        else:
                            fn = fwd_bwd_fn(impl, p, grad_filter)
                            fn()  # warm-up: compilation, autotuning, allocator growth
                            peak = _peak_extra_bytes(fn, device)
                            t = timer(fn)
                            timing = dict(fwd_bwd_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, method=t.method)
                            ref = reference_logps(p) if ref is None else ref
                            err = value_error(impl, p, ref)
                            timing.update(value_err=err, value_ok=err <= VALUE_RTOL[dtype_name])
                        ms = timing["fwd_bwd_ms"]
                        rec.update(timing, peak_mem_bytes=peak, tflops=6 * n * h * v / (ms * 1e-3) / 1e12,
                                   floor_ratio=(ms / floor_ms) if floor_ms else None)
                    except Exception as exc:  # noqa: BLE001 -- record the failure (OOM, missing GPU op) and go on
                        oom = is_oom(exc)
                        rec.update(fwd_bwd_ms=None, floor_ratio=None, tflops=None, peak_mem_bytes=None,
                                   error="oom" if oom else f"{type(exc).__name__}: {str(exc)[:300]}")
                    if rec.get("error") == "oom":
                        # After the except block, whose traceback pinned the failed impl's tensors (fn's closure,
                        # its [N, V] intermediates): only now can the cache go back to the driver.
                        fn = None
                        release_memory(device)
                records.append(rec)
                if out is not None:
                    append_jsonl(out, rec)
                log(_fmt(rec))
            del p, ref
            release_memory(device)
    return records


def _fmt(r: dict) -> str:
    head = f"{r['impl']:<19} N={r['N']} H={r['H']} V={r['V']} {r['dtype']} {r['inputs']:<6} (H={r['entropy']:.2f} nats)"
    if r.get("fwd_bwd_ms") is None:
        return f"{head}  -- {r.get('skipped') or r.get('error')}"
    mem = f"{r['peak_mem_bytes'] / 2**30:.2f} GiB" if r.get("peak_mem_bytes") is not None else "n/a"
    ratio = f"{r['floor_ratio']:.2f}x floor" if r.get("floor_ratio") else "no floor"
    check = "" if r.get("value_err") is None else (f"  err {r['value_err']:.1e}" if r.get("value_ok") else
                                                   f"  VALUE MISMATCH: err {r['value_err']:.2e} vs the fp32 reference")
    return f"{head}  {r['fwd_bwd_ms']:9.3f} ms  {r['tflops']:7.2f} TFLOP/s  {ratio}  peak {mem}{check}"


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(s.strip().isdigit() and int(s) > 0 for s in parts):
            raise argparse.ArgumentTypeError(f"--shapes items must be NxHxV with positive ints, got {item!r}")
        shapes.append(tuple(int(s) for s in parts))
    return shapes


def _parse_list(allowed: tuple[str, ...], flag: str):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{flag} must be a comma list from {allowed}, got {text!r}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.head", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=_parse_shapes, default=None,
                    help="comma list of NxHxV (default: 16384x2048x128256,8192x4096x128256)")
    ap.add_argument("--impls", type=_parse_list(IMPLS, "--impls"), default=None, help=f"comma list from {IMPLS}")
    ap.add_argument("--inputs", type=_parse_list(INPUTS, "--inputs"), default=None, help="flat,peaked")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 (fp32 for --smoke)")
    ap.add_argument("--grad-filter", type=float, default=GRAD_FILTER,
                    help=f"opt-in filter budget timed by inpo-triton-filter (default {GRAD_FILTER:g})")
    ap.add_argument("--smoke", action="store_true", help=f"tiny shape {SMOKE_SHAPE}, fast impls only (CPU default)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSONL to append to (default on CUDA: bench/results/head-<device>.jsonl; CPU: print only)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and "triton" not in sys.modules:
        # The CPU run interprets the Triton kernels; Triton must see this before its first import
        # (environment_info() below imports it).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    smoke = args.smoke or device.type == "cpu"
    if smoke and not args.smoke:
        print("no CUDA device: running the CPU smoke benchmark (--smoke)", file=sys.stderr)
    shapes = args.shapes or ([SMOKE_SHAPE] if smoke else list(SHAPES))
    impls = args.impls or list(SMOKE_IMPLS if smoke else IMPLS)
    dtype = DTYPES[args.dtype or ("fp32" if smoke else "bf16")]
    if device.type == "cpu" and dtype == torch.bfloat16 and "inpo-triton" in impls:
        print("note: the Triton interpreter upcasts bf16 dots to fp32 on CPU", file=sys.stderr)
    out = args.out
    if out is None and device.type == "cuda":
        out = RESULTS_DIR / f"head-{device_slug()}.jsonl"
    if not 0.0 < args.grad_filter < 1.0:
        print(f"--grad-filter must be a budget in (0, 1), got {args.grad_filter}", file=sys.stderr)
        return 2
    problem = output_problem("python -m bench.head", files={"--out": out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    records = run(shapes, impls, args.inputs or list(INPUTS), dtype, device, smoke=smoke, out=out,
                  grad_filter=args.grad_filter)
    if out is not None:
        print(f"{len(records)} records appended to {out}")
    else:
        print(json.dumps({"records": len(records), "note": "not written (pass --out)"}))
    wrong = [f"{r['impl']} {r['N']}x{r['H']}x{r['V']} {r['inputs']}" for r in records if r.get("value_ok") is False]
    if wrong:
        print(f"VALUE MISMATCH against the fp32 reference (> {VALUE_RTOL[records[0]['dtype']]:g} relative): "
              f"{', '.join(wrong)}", file=sys.stderr)
        return 1
    failed = [r for r in records if r.get("error")]
    return 1 if failed and all(r.get("fwd_bwd_ms") is None for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
