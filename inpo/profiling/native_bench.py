"""CPU head benchmark: the native C++ head against ``impl="torch"``, ``impl="naive"`` and its GEMM floor.

``python -m bench.head_cpu`` times fp32 forward+backward (summed log-probs of every sequence, then backward
with a fixed upstream gradient) on each shape, all impls measured side by side in one run: one warm-up
call each, then ``--reps`` rounds that run every impl once (round-robin, so load from other processes hits
all impls alike); the median is reported. ``gemm-floor`` is the cost floor of the recompute design: the
four ATen GEMMs (forward logits, recomputed logits, dHidden, dW = 8·N·H·V FLOPs) on the same shapes.

Peak memory (``peak_mem_bytes``) is the peak resident set size above the inputs, read from the kernel's
own counter: in a fresh subprocess per impl and shape, the inputs are built and the impl warmed up on a
tiny shape (libraries loaded), then ``VmHWM`` is reset through ``/proc/self/clear_refs`` and one fwd+bwd
runs; the figure is ``VmHWM - VmRSS(before)``. It includes the gradient tensors the call returns. A fresh
process matters: the allocator's free pool in a warm process would hide (or double) allocations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from inpo.profiling.record import append_jsonl, environment_info

IMPLS = ("inpo-native", "torch", "naive", "gemm-floor")
DEFAULT_SHAPES = ((4096, 512, 32000), (4096, 512, 65536))
SMOKE_SHAPE = (64, 16, 300)
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "bench" / "results" / "head-cpu.jsonl"
SEQ_LEN = 256  # tokens per packed sequence; every label is a response token (nothing ignored)
# Targets from the issue: fwd+bwd within 1.15x the GEMM floor, >= 1.15x faster than impl="torch",
# and at most 1/10 of the naive head's peak memory.
TARGETS = {"max_floor_ratio": 1.15, "min_speedup_vs_torch": 1.15, "max_mem_vs_naive": 0.1}

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
    if impl == "gemm-floor":
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


# ---- peak memory ---------------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_extra_rss(fn) -> int | None:
    """Peak RSS (bytes) reached during ``fn()`` above the RSS just before it; None without /proc support."""
    before = _status_kb("VmRSS")
    if before is None or not _reset_peak_rss():
        return None
    fn()
    peak = _status_kb("VmHWM")
    return None if peak is None else max(0, peak - before) * 1024


def _mem_probe(impl: str, shape: tuple[int, int, int]) -> int | None:
    step_fn(impl, make_inputs(*SMOKE_SHAPE))()  # load libraries / the native extension outside the window
    fn = step_fn(impl, make_inputs(*shape))
    return peak_extra_rss(fn)


def peak_mem_subprocess(impl: str, shape: tuple[int, int, int], threads: int) -> int | None:
    cmd = [sys.executable, "-m", "inpo.profiling.native_bench", "--mem-probe", impl,
           "--shapes", "x".join(map(str, shape)), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        print(f"[head-cpu] memory probe for {impl} {shape} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mem_bytes"]


# ---- the run -------------------------------------------------------------------------------------------

def run(shapes, impls, *, reps: int, warmup: int, threads: int, mem: str, note: str, smoke: bool) -> list[dict]:
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
        for impl in impls:
            for _ in range(warmup):
                fns[impl]()
        samples = {impl: [] for impl in impls}
        for _ in range(reps):
            for impl in impls:
                t0 = time.perf_counter()
                fns[impl]()
                samples[impl].append((time.perf_counter() - t0) * 1e3)
        del fns, x
        med = {impl: statistics.median(s) for impl, s in samples.items()}
        peak = {}
        for impl in impls:
            if mem == "subprocess":
                peak[impl] = peak_mem_subprocess(impl, (n, h, v), threads)
            elif mem == "inprocess":
                peak[impl] = peak_extra_rss(step_fn(impl, make_inputs(n, h, v)))
            else:
                peak[impl] = None
        flops = 8 * n * h * v
        for impl in impls:
            r = dict(bench="head-cpu", impl=impl, n=n, h=h, v=v, dtype="float32", threads=threads, reps=reps,
                     warmup=warmup, fwd_bwd_ms=round(med[impl], 3), samples_ms=[round(t, 3) for t in samples[impl]],
                     gflop_s_8nhv=round(flops / med[impl] / 1e6, 2), peak_mem_bytes=peak[impl],
                     peak_mem_method={"subprocess": "fresh-process VmHWM-VmRSS", "inprocess": "in-process VmHWM-VmRSS",
                                      "off": None}[mem], smoke=smoke, note=note, **env)
            if "gemm-floor" in med:
                r["floor_ms"] = round(med["gemm-floor"], 3)
                r["floor_ratio"] = round(med[impl] / med["gemm-floor"], 4)
            if "torch" in med:
                r["speedup_vs_torch"] = round(med["torch"] / med[impl], 4)
            if peak.get("naive") and peak[impl] is not None:
                r["mem_vs_naive"] = round(peak[impl] / peak["naive"], 4)
            if impl == "inpo-native":
                r["targets"] = TARGETS
                r["meets_targets"] = {
                    "floor": r.get("floor_ratio", float("inf")) <= TARGETS["max_floor_ratio"],
                    "vs_torch": r.get("speedup_vs_torch", 0.0) >= TARGETS["min_speedup_vs_torch"],
                    "memory": r.get("mem_vs_naive", float("inf")) <= TARGETS["max_mem_vs_naive"],
                }
            records.append(r)
            print(_fmt(r))
    return records


def _fmt(r: dict) -> str:
    mem = "n/a" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:8.1f} MiB"
    extra = "".join(f"  {k}={r[k]}" for k in ("floor_ratio", "speedup_vs_torch", "mem_vs_naive") if k in r)
    return (f"[head-cpu] N={r['n']} H={r['h']} V={r['v']} {r['impl']:<12} {r['fwd_bwd_ms']:10.1f} ms  "
            f"{r['gflop_s_8nhv']:7.1f} GFLOP/s(8NHV)  peak {mem}{extra}")


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
    args = build_parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit(f"--reps must be >= 1, --warmup >= 0 and --threads >= 1, got {args.reps}, "
                         f"{args.warmup}, {args.threads}")
    shapes = args.shapes or ([SMOKE_SHAPE] if args.smoke else list(DEFAULT_SHAPES))
    if args.mem_probe:
        torch.set_num_threads(args.threads)
        print(json.dumps({"peak_mem_bytes": _mem_probe(args.mem_probe, shapes[0])}))
        return 0
    mem = args.mem or ("inprocess" if args.smoke else "subprocess")
    reps = 1 if args.smoke and args.reps == 3 else args.reps
    records = run(shapes, args.impls, reps=reps, warmup=args.warmup, threads=args.threads, mem=mem,
                  note=args.note, smoke=args.smoke)
    append_jsonl(args.out, records)
    print(f"[head-cpu] appended {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
