"""The benches' measurement tools (bench/lib): timers, the measured GEMM peak, NVML degradation, the OOM sweep,
traces; and ``inpo bench`` pointing at the bench scripts."""

from __future__ import annotations

import json
import time

import pytest
import torch

from bench.lib import sweep
from bench.lib.nvml import NvmlMonitor
from bench.lib.sweep import oom_sweep
from bench.lib.timing import is_oom, measure, measure_peak_flops, peak_memory_bytes, summarize
from bench.lib.trace import profile_to_chrome_trace


# ---- timing ------------------------------------------------------------------------------------------------

def test_summarize_quantiles_match_numpy():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    t = summarize(xs)
    import numpy as np

    assert t.median_ms == pytest.approx(np.median(xs))
    assert t.p20_ms == pytest.approx(np.quantile(xs, 0.2))
    assert t.p80_ms == pytest.approx(np.quantile(xs, 0.8))
    assert (t.min_ms, t.max_ms, t.n) == (1.0, 10.0, 6)
    assert t.mean_ms == pytest.approx(np.mean(xs))


def test_summarize_rejects_empty():
    with pytest.raises(ValueError, match="samples_ms"):
        summarize([])


def test_measure_warms_up_then_times_reps():
    calls = []
    t = measure(lambda: calls.append(1), device="cpu", warmup=3, reps=7)
    assert len(calls) == 10  # warm-up calls are made but not timed
    assert t.n == 7 and t.method == "wall"


def test_measure_sees_the_cost_of_fn():
    t = measure(lambda: time.sleep(0.02), device="cpu", warmup=1, reps=3)
    assert 15.0 <= t.median_ms <= 500.0  # sleep(20 ms) on a loaded machine
    assert t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms <= t.max_ms


def test_measure_min_time_extends_reps():
    t = measure(lambda: time.sleep(0.005), device="cpu", warmup=0, reps=1, min_time_s=0.05)
    assert t.n >= 3


@pytest.mark.parametrize("kw, match", [(dict(warmup=-1), "warmup"), (dict(reps=0), "reps"),
                                       (dict(method="bogus"), "method"), (dict(method="events"), "CUDA")])
def test_measure_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        measure(lambda: None, device="cpu", **kw)


def test_peak_memory_is_none_on_cpu_and_oom_detection():
    assert peak_memory_bytes("cpu") is None
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only device errors count


# ---- the measured GEMM peak ---------------------------------------------------------------------------------

def test_measure_peak_flops_counts_2n3_over_the_fastest_sample(monkeypatch):
    """The arithmetic, independent of machine load: 2·n³ FLOPs over the fastest timed call (min_ms, in ms)."""
    import bench.lib.timing as timing

    fake = timing.Timing(median_ms=9.0, p20_ms=8.0, p80_ms=10.0, min_ms=4.0, max_ms=12.0, mean_ms=9.0, n=3,
                         method="fake")
    monkeypatch.setattr(timing, "measure", lambda fn, **kw: (fn(), fake)[1])
    peak = measure_peak_flops("cpu", n=64, reps=3)
    assert peak["peak_flops"] == pytest.approx(2 * 64**3 / 4e-3) and peak["gemm_ms"] == 4.0


def test_measure_peak_flops_cpu_is_plausible():
    """Physical bounds for an fp32 GEMM on the threads torch uses. Above: each thread's core retires at most
    2 AVX-512 FMAs of 16 fp32 lanes per cycle (64 FLOP/cycle) at <= 5 GHz. Below: 0.1 GFLOP/s -- a BLAS GEMM on a
    quiet 2-core box measures 10-80 GFLOP/s at this size, and CI once measured 0.86 GFLOP/s with three other jobs
    on its two cores, so the floor only catches a unit slip (ms taken as s: 1e3 off)."""
    peak = measure_peak_flops("cpu", n=128, reps=3)
    assert peak["gemm_dtype"] == "float32" and peak["gemm_n"] == 128
    upper = torch.get_num_threads() * 5e9 * 64
    assert 1e8 < peak["peak_flops"] < upper, (peak["peak_flops"], upper)
    assert peak["peak_tflops"] == pytest.approx(peak["peak_flops"] / 1e12)


# ---- NVML --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU degradation")
def test_nvml_degrades_to_no_nvml():
    with NvmlMonitor(interval_s=0.01) as mon:
        time.sleep(0.02)
    assert not mon.available
    s = mon.summary(steps=3)
    assert set(s) == {"nvml"} and s["nvml"].startswith("no NVML")


def test_nvml_bad_interval():
    with pytest.raises(ValueError, match="interval_s"):
        NvmlMonitor(interval_s=0)


@pytest.mark.gpu
def test_nvml_on_gpu_reports_energy_and_clocks():
    a = torch.randn(4096, 4096, device="cuda")
    with NvmlMonitor(interval_s=0.01) as mon:
        for _ in range(50):
            a @ a
        torch.cuda.synchronize()
    s = mon.summary(steps=50)
    if s["nvml"] != "ok":
        pytest.skip(s["nvml"])
    assert s["sm_clock_mhz_median"] > 0 and s["power_w_mean"] > 0
    assert s["energy_j"] is None or s["energy_j"] >= 0


# ---- OOM sweep -----------------------------------------------------------------------------------------------

def test_oom_sweep_reports_largest_that_fit():
    tried = []

    def try_size(n):
        tried.append(n)
        if n > 5000:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"n": n}

    res = oom_sweep(try_size, start=1024, limit=1 << 20, device="cpu")
    assert tried == [1024, 2048, 4096, 8192]
    assert res.max_fit == 4096 and res.oom_at == 8192 and res.oom_reached
    assert [p[0] for p in res.points] == [1024, 2048, 4096]


def test_oom_sweep_stops_at_limit_and_when_start_fails():
    res = oom_sweep(lambda n: {}, start=2, limit=16)
    assert (res.max_fit, res.oom_at, res.oom_reached) == (16, None, False)

    def always_oom(n):
        raise RuntimeError("CUDA error: out of memory")

    res = oom_sweep(always_oom, start=2, limit=16)
    assert res.max_fit is None and res.oom_at == 2


def test_oom_sweep_releases_memory_after_the_failed_step_is_gone(monkeypatch):
    """On CUDA, release_memory (gc + empty_cache) can only return the failed step's blocks to the driver once
    nothing pins its tensors: the exception's traceback keeps the failing frame's locals alive until the except
    block ends, so the release must come after it."""
    import weakref

    class Activation:  # stands in for the failed step's tensors
        pass

    refs, alive_at_release = [], []

    def try_size(n):
        if n > 4:
            act = Activation()
            refs.append(weakref.ref(act))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {}

    monkeypatch.setattr(sweep, "release_memory", lambda device=None: alive_at_release.append(refs[-1]() is not None))
    res = sweep.oom_sweep(try_size, start=2, limit=64, device="cuda")
    assert res.oom_at == 8 and res.max_fit == 4
    assert alive_at_release == [False]


def test_oom_sweep_propagates_real_bugs():
    def buggy(n):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        oom_sweep(buggy, start=2, limit=16)
    with pytest.raises(ValueError, match="limit"):
        oom_sweep(lambda n: {}, start=8, limit=4)


# ---- trace ---------------------------------------------------------------------------------------------------

def test_chrome_trace_is_written_atomically(tmp_path):
    x = torch.randn(64, 64, requires_grad=True)
    path = profile_to_chrome_trace(lambda: (x @ x).sum().backward(), tmp_path / "t" / "step.json", device="cpu")
    data = json.loads(path.read_text())
    names = {e.get("name", "") for e in data["traceEvents"]}
    assert any("mm" in n for n in names)
    assert [p.name for p in path.parent.iterdir()] == ["step.json"]  # no temp file left behind
    with pytest.raises(ValueError, match=".json"):
        profile_to_chrome_trace(lambda: None, tmp_path / "trace.txt")


# ---- the bench scripts ---------------------------------------------------------------------------------------

def test_inpo_bench_points_to_the_bench_scripts(capsys):
    """bench/ is not installed with the package: `inpo bench` says where the benchmarks are instead of failing with
    an unknown-command error; every name it lists is a runnable `python -m bench.<name>` module."""
    import importlib
    import re

    from inpo.cli import main

    assert main(["bench", "head"]) == 2
    err = capsys.readouterr().err
    names = re.search(r"run `python -m bench.<name>` \(([^)]*)\)", err).group(1)
    names = [n.strip() for n in names.split(";")[0].split(",")]
    assert "head" in names and "report" in names and len(names) == 9
    for name in names:
        assert hasattr(importlib.import_module(f"bench.{name}"), "main"), name
    assert main(["--help"]) == 0 and "bench" not in capsys.readouterr().out
