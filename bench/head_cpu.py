"""CPU head benchmark: the native C++ head against ``impl="torch"``, ``impl="naive"`` and the FLOP floor.

``python -m bench.head_cpu`` times fp32 forward+backward (summed log-probs of every sequence, then backward
with a fixed upstream gradient) on each shape, all impls measured side by side in one run: one warm-up
call each, then ``--reps`` rounds that run every impl once (round-robin, so load from other processes hits
all impls alike); the median is reported.

The floor is FLOPs at the machine's peak, measured in the same run: each round also times a cache-resident
fp32 GEMM (``peak_gemm``: operands of a few MiB, inside L3, shapes [M, H] @ [H, M]) and the fastest rate seen
over all rounds is the peak (a floor must be a lower bound: noise only ever slows a GEMM down). Every record
carries ``floor_8nhv_ms`` = 8·N·H·V / peak (the recompute design: forward logits, recomputed logits, dHidden,
dW) and ``floor_6nhv_ms`` = 6·N·H·V / peak (the useful work: a design that kept the logits); ``floor_ratio`` =
fwd_bwd_ms / floor_8nhv_ms. ``aten-gemms`` is a reference, not a floor: the four ATen GEMMs of the recompute
design on the same shapes, each materialising an [N, V] fp32 tensor (the native head, which never leaves the
cache with its tiles, beats it -- which is why it cannot be the floor).

Peak memory (``peak_mem_bytes``) is the peak resident set size above the inputs, read from the kernel's
own counter: in a fresh subprocess per impl and shape, the inputs are built and the impl warmed up on a
tiny shape (libraries loaded), then ``VmHWM`` is reset through ``/proc/self/clear_refs`` and one fwd+bwd
runs; the figure is ``VmHWM - VmRSS(before)``. It includes the gradient tensors the call returns. A fresh
process matters: the allocator's free pool in a warm process would hide (or double) allocations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.lib.memory import peak_extra_rss
from bench.lib.outputs import output_problem
from bench.lib.timing import quantile
from inpo.utils.record import append_jsonl, environment_info

IMPLS = ("inpo-native", "torch", "naive", "aten-gemms")
DEFAULT_SHAPES = ((4096, 512, 32000), (4096, 512, 65536))
SMOKE_SHAPE = (64, 16, 300)
REPO_ROOT = Path(__file__).resolve().parents[1]  # `python -m bench.head_cpu` runs from here
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "head-cpu.jsonl"
SEQ_LEN = 256  # tokens per packed sequence; every label is a response token (nothing ignored)
# Targets: fwd+bwd within 1.25x the 8NHV floor at the measured peak, >= 1.15x faster than impl="torch",
# and at most 1/10 of the naive head's peak memory.
TARGETS = {"max_floor_ratio": 1.25, "min_speedup_vs_torch": 1.15, "max_mem_vs_naive": 0.1}
# Rows/cols of the cache-resident peak GEMMs [M, H] @ [H, M]: all operands inside the 32 MiB L3 at H=512 (8 and 24 MiB).
# Small GEMMs run below peak on two threads (threading overhead: 6 GFLOP/s at 512^3 vs 20 at 2048x512x2048 measured
# side by side), so the peak is the best rate over both sizes.
PEAK_GEMM_MS = (1024, 2048)

_HEAD_IMPL = {"inpo-native": "native", "torch": "torch", "naive": "naive"}


def make_inputs(n: int, h: int, v: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cu = list(range(0, n, SEQ_LEN)) + [n]
    return dict(hidden=torch.randn(n, h, generator=g),
                weight=torch.randn(v, h, generator=g) / h**0.5,
                labels=torch.randint(0, v, (n,), generator=g),
                cu_seqlens=torch.tensor(cu, dtype=torch.int32),
                upstream=torch.randn(len(cu) - 1, generator=g))


def step_fn(impl: str, x: dict):
    """One forward+backward of ``impl`` on inputs ``x`` (gradients dropped after each call)."""
    if impl == "aten-gemms":
        h, w = x["hidden"], x["weight"]

        def floor():
            with torch.no_grad():
                z = h @ w.t()  # forward logits
                z = h @ w.t()  # recomputed in backward
                h_grad = z @ w  # dHidden (z stands in for dz: same shape, same GEMM)
                w_grad = z.t() @ h  # dW
            return h_grad, w_grad

        return floor
    if impl not in _HEAD_IMPL:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    from inpo.ops import sequence_logps

    hidden = x["hidden"].clone().requires_grad_(True)
    weight = x["weight"].clone().requires_grad_(True)

    def head():
        out = sequence_logps(hidden, weight, x["labels"], x["cu_seqlens"], impl=_HEAD_IMPL[impl], check_values=False)
        out.backward(x["upstream"])
        hidden.grad = weight.grad = None

    return head


def peak_gemm_fn(h: int, m: int = PEAK_GEMM_MS[0], seed: int = 0):
    """A closure running one fp32 [m, h] @ [h, m] GEMM into a preallocated output; its FLOPs are
    ``peak_gemm_flops(h, m)``. Same inner dimension as the head's GEMMs, operands small enough to stay in cache."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, h, generator=g), torch.randn(h, m, generator=g)
    out = torch.empty(m, m)
    reps = max(1, math.ceil(2e8 / (2 * m * h * m)))  # >= 0.2 GFLOP a call so timer overhead is negligible

    def gemm():
        for _ in range(reps):
            torch.matmul(a, b, out=out)

    gemm.flops = 2 * m * h * m * reps
    return gemm


def floors_ms(n: int, h: int, v: int, peak_flops: float) -> dict:
    """The FLOP floors of one head fwd+bwd at ``peak_flops`` FLOP/s, in ms."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0 FLOP/s, got {peak_flops}")
    return {"floor_8nhv_ms": 8 * n * h * v / peak_flops * 1e3, "floor_6nhv_ms": 6 * n * h * v / peak_flops * 1e3}


# ---- peak memory ---------------------------------------------------------------------------------------

def _mem_probe(impl: str, shape: tuple[int, int, int]) -> int | None:
    step_fn(impl, make_inputs(*SMOKE_SHAPE))()  # load libraries / the native extension outside the window
    fn = step_fn(impl, make_inputs(*shape))
    return peak_extra_rss(fn)


def peak_mem_subprocess(impl: str, shape: tuple[int, int, int], threads: int) -> int | None:
    cmd = [sys.executable, "-m", "bench.head_cpu", "--mem-probe", impl,
           "--shapes", "x".join(map(str, shape)), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    if res.returncode != 0:
        print(f"[head-cpu] memory probe for {impl} {shape} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mem_bytes"]


# ---- the run -------------------------------------------------------------------------------------------

def run(shapes, impls, *, reps: int, warmup: int, threads: int, mem: str, note: str, smoke: bool,
        command: str | None = None, out: Path | None = None) -> list[dict]:
    """Time every impl on every shape; a shape's records are appended to ``out`` as soon as they exist."""
    torch.set_num_threads(threads)
    if "inpo-native" in impls:
        from inpo.ops import native_impl

        if not native_impl.is_available():
            print(f"[head-cpu] skipping inpo-native: {native_impl.build_error()}", file=sys.stderr)
            impls = [i for i in impls if i != "inpo-native"]
    env = environment_info()
    records = []
    for n, h, v in shapes:
        x = make_inputs(n, h, v)
        fns = {impl: step_fn(impl, x) for impl in impls}
        gemms = [peak_gemm_fn(h, m) for m in PEAK_GEMM_MS]
        for fn in (*fns.values(), *gemms):
            for _ in range(warmup):
                fn()
        samples = {impl: [] for impl in impls}
        peak_rates = []  # FLOP/s of the cache-resident GEMM, several times per round (between the impls)
        load = [os.getloadavg()[0]]
        for _ in range(reps):
            for impl in impls:
                peak_rates += [_time_rate(g) for g in gemms]
                t0 = time.perf_counter()
                fns[impl]()
                samples[impl].append((time.perf_counter() - t0) * 1e3)
            load.append(os.getloadavg()[0])
        peak_rates += [_time_rate(g) for g in gemms]
        del fns, x, gemms
        med = {impl: statistics.median(s) for impl, s in samples.items()}
        peak = max(peak_rates)
        floors = floors_ms(n, h, v, peak)
        mem_peak = {}
        for impl in impls:
            if mem == "subprocess":
                mem_peak[impl] = peak_mem_subprocess(impl, (n, h, v), threads)
            elif mem == "inprocess":
                mem_peak[impl] = peak_extra_rss(step_fn(impl, make_inputs(n, h, v)))
            else:
                mem_peak[impl] = None
        flops = 8 * n * h * v
        for impl in impls:
            r = dict(bench="head-cpu", impl=impl, n=n, h=h, v=v, dtype="float32", threads=threads, reps=reps,
                     warmup=warmup, fwd_bwd_ms=round(med[impl], 3), samples_ms=[round(t, 3) for t in samples[impl]],
                     fwd_bwd_p20_ms=round(_quantile(samples[impl], 0.2), 3),
                     fwd_bwd_p80_ms=round(_quantile(samples[impl], 0.8), 3),
                     gflop_s_8nhv=round(flops / med[impl] / 1e6, 2), peak_mem_bytes=mem_peak[impl],
                     peak_mem_method={"subprocess": "fresh-process VmHWM-VmRSS", "inprocess": "in-process VmHWM-VmRSS",
                                      "off": None}[mem], smoke=smoke, note=note,
                     peak_flops=peak, peak_gflop_s=round(peak / 1e9, 2), peak_gemm=" | ".join(f"fp32 [{m}, {h}] @ [{h}, {m}]" for m in PEAK_GEMM_MS),
                     peak_gflop_s_median=round(statistics.median(peak_rates) / 1e9, 2),
                     floor_8nhv_ms=round(floors["floor_8nhv_ms"], 6), floor_6nhv_ms=round(floors["floor_6nhv_ms"], 6),
                     floor_ms=round(floors["floor_8nhv_ms"], 6), floor_kind="8NHV at the measured fp32 GEMM peak",
                     floor_ratio=round(med[impl] / floors["floor_8nhv_ms"], 4),
                     floor_ratio_6nhv=round(med[impl] / floors["floor_6nhv_ms"], 4),
                     loadavg_1m=[round(x, 2) for x in load], command=command, **env)
            if "torch" in med:
                r["speedup_vs_torch"] = round(med["torch"] / med[impl], 4)
            if mem_peak.get("naive") and mem_peak[impl] is not None:
                r["mem_vs_naive"] = round(mem_peak[impl] / mem_peak["naive"], 4)
            if impl == "inpo-native":
                r["targets"] = TARGETS
                r["meets_targets"] = {
                    "floor": r.get("floor_ratio", float("inf")) <= TARGETS["max_floor_ratio"],
                    "vs_torch": r.get("speedup_vs_torch", 0.0) >= TARGETS["min_speedup_vs_torch"],
                    "memory": r.get("mem_vs_naive", float("inf")) <= TARGETS["max_mem_vs_naive"],
                }
            records.append(r)
            print(_fmt(r), flush=True)
        if out is not None:
            append_jsonl(out, records[-len(impls):])
    return records


def _time_rate(fn) -> float:
    """FLOP/s of one call of a ``peak_gemm_fn`` closure."""
    t0 = time.perf_counter()
    fn()
    return fn.flops / (time.perf_counter() - t0)


def _quantile(xs: list[float], q: float) -> float:
    return quantile(sorted(xs), q)


def _fmt(r: dict) -> str:
    mem = "n/a" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:8.1f} MiB"
    extra = "".join(f"  {k}={r[k]}" for k in ("floor_ratio", "floor_ratio_6nhv", "speedup_vs_torch", "mem_vs_naive")
                    if k in r)
    return (f"[head-cpu] N={r['n']} H={r['h']} V={r['v']} {r['impl']:<12} {r['fwd_bwd_ms']:10.1f} ms  "
            f"{r['gflop_s_8nhv']:7.1f} GFLOP/s(8NHV) of {r['peak_gflop_s']:.1f} peak  mem {mem}{extra}")


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"--shapes items must be NxHxV with positive ints, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def _parse_impls(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(i not in IMPLS for i in items):
        raise argparse.ArgumentTypeError(f"--impls must be a comma list from {IMPLS}, got {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.head_cpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=_parse_shapes, default=None,
                    help="comma list of NxHxV (default 4096x512x32000,4096x512x65536)")
    ap.add_argument("--impls", type=_parse_impls, default=list(IMPLS), help=f"comma list from {IMPLS}")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per impl and shape")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch/OpenMP threads")
    ap.add_argument("--mem", choices=("subprocess", "inprocess", "off"), default=None,
                    help="peak-memory method (default subprocess; inprocess for --smoke)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny shape {SMOKE_SHAPE}, one rep (for tests)")
    ap.add_argument("--note", default="", help="free text stored with every record (e.g. 'shared CPU')")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSONL to append to (default {DEFAULT_OUT})")
    ap.add_argument("--mem-probe", choices=IMPLS, default=None, help=argparse.SUPPRESS)  # internal: one probe
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit(f"--reps must be >= 1, --warmup >= 0 and --threads >= 1, got {args.reps}, "
                         f"{args.warmup}, {args.threads}")
    shapes = args.shapes or ([SMOKE_SHAPE] if args.smoke else list(DEFAULT_SHAPES))
    if args.mem_probe:
        torch.set_num_threads(args.threads)
        print(json.dumps({"peak_mem_bytes": _mem_probe(args.mem_probe, shapes[0])}))
        return 0
    problem = output_problem("python -m bench.head_cpu", files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    mem = args.mem or ("inprocess" if args.smoke else "subprocess")
    reps = 1 if args.smoke and args.reps == 3 else args.reps
    records = run(shapes, args.impls, reps=reps, warmup=args.warmup, threads=args.threads, mem=mem,
                  note=args.note, smoke=args.smoke, command="python -m bench.head_cpu " + shlex.join(argv),
                  out=args.out)
    print(f"[head-cpu] appended {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
