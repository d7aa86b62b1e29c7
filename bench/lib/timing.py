"""Timers that work the same on CPU and CUDA: warm-up first, then median and quantiles of many samples.

On CUDA every sample is bracketed by CUDA events (device time, no host-side launch jitter); on CPU by
``time.perf_counter``. ``method="do_bench"`` delegates to ``triton.testing.do_bench`` (CUDA only; it also flushes
L2 between samples, which microbenches want and end-to-end steps do not need).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

QUANTILES = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class Timing:
    """Summary of timed samples, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    n: int
    method: str

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default rule)."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_ms: list[float], method: str = "samples") -> Timing:
    """Median, 20/80% quantiles, min, max and mean of timing samples (ms)."""
    if not samples_ms:
        raise ValueError("samples_ms must hold at least one timing sample, got an empty list")
    xs = sorted(float(x) for x in samples_ms)
    return Timing(median_ms=statistics.median(xs), p20_ms=quantile(xs, 0.2), p80_ms=quantile(xs, 0.8),
                  min_ms=xs[0], max_ms=xs[-1], mean_ms=statistics.fmean(xs), n=len(xs), method=method)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued device work (a no-op on CPU): every wall-clock reading on CUDA must follow one."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def measure(fn: Callable[[], object], *, device: torch.device | str | None = None, warmup: int = 3, reps: int = 10,
            min_time_s: float = 0.0, max_reps: int = 1000, method: str = "auto") -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls (compilation, autotuning, allocator growth), then at least ``reps``
    timed calls, continuing until ``min_time_s`` has been spent (capped at ``max_reps``).

    ``method``: ``"auto"`` (CUDA events on CUDA, perf_counter on CPU), ``"events"``, ``"wall"`` or
    ``"do_bench"`` (``triton.testing.do_bench`` with its own warm-up/rep budget in ms = ``warmup``·10 /
    ``min_time_s``; returns its 20/50/80% quantiles, min/max/mean are then the quantiles' envelope).
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 calls, got {warmup}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1 timed call, got {reps}")
    if method not in ("auto", "events", "wall", "do_bench"):
        raise ValueError(f"method must be 'auto', 'events', 'wall' or 'do_bench', got {method!r}")
    device = _resolve_device(device)
    if method == "auto":
        method = "events" if device.type == "cuda" else "wall"
    if method in ("events", "do_bench") and device.type != "cuda":
        raise ValueError(f"method={method!r} needs a CUDA device, got device={device}")
    if method == "do_bench":
        import triton.testing

        q = triton.testing.do_bench(fn, warmup=max(1, warmup * 10), rep=max(1.0, min_time_s * 1000.0),
                                    quantiles=list(QUANTILES))
        p20, med, p80 = (float(x) for x in q)
        return Timing(median_ms=med, p20_ms=p20, p80_ms=p80, min_ms=p20, max_ms=p80, mean_ms=med, n=-1,
                      method="do_bench")

    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start_all = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < reps or time.perf_counter() - start_all < min_time_s):
        if method == "events":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            samples.append((time.perf_counter() - t0) * 1000.0)
    return summarize(samples, method=method)


# ---- memory ------------------------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a fresh peak-memory window (CUDA); frees cached blocks so the next peak is this run's own."""
    device = _resolve_device(device)
    release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Peak bytes allocated by tensors on a CUDA device since the last reset; None on CPU, where torch keeps
    no allocator statistics (process RSS would count the interpreter and libraries, so it is not reported)."""
    device = _resolve_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return None


def is_oom(exc: BaseException) -> bool:
    """True for a device out-of-memory error (``torch.OutOfMemoryError``, or a RuntimeError saying so, as some
    kernels and older torch versions raise)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory(device: torch.device | str | None = None) -> None:
    """After an OOM: drop the frames' garbage and the allocator's cached blocks so the next try starts clean."""
    device = _resolve_device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def measure_peak_flops(device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                       n: int | None = None, reps: int = 20) -> dict:
    """Dense GEMM throughput on this device: the peak a bench reports beside its numbers, and MFU's denominator where
    the board has no datasheet peak (:func:`inpo.utils.mfu.peak_bf16_flops`; CPU, unknown GPUs).

    CUDA: an ``n×n @ n×n`` bf16 matmul (default n = 8192: large enough to saturate an H100's tensor cores).
    CPU: fp32 with n = 512 (a smoke-mode stand-in; the CPU number is only meaningful for the same run's ratios).
    Returns dict(peak_flops, peak_tflops, gemm_n, gemm_dtype, gemm_ms).
    """

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = 8192 if device.type == "cuda" else 512
    if n < 16:
        raise ValueError(f"n must be >= 16 for a meaningful GEMM, got {n}")
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = measure(lambda: torch.matmul(a, b, out=out), device=device, warmup=3, reps=reps)
    # The fastest sample, not the median: the peak is the denominator, so the honest choice is the highest rate
    # the device showed (a lower peak would flatter the MFU).
    peak = 2.0 * n**3 / (t.min_ms / 1e3)
    del a, b, out
    return {"peak_flops": peak, "peak_tflops": peak / 1e12, "gemm_n": n, "gemm_dtype": str(dtype).replace("torch.", ""),
            "gemm_ms": t.min_ms}
