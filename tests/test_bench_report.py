"""``inpo bench report``: tables, targets and plots from synthetic records; robust to empty/missing/bad files."""

from __future__ import annotations


import pytest

from inpo.profiling import report
from inpo.profiling.record import append_jsonl

GPU = "NVIDIA H100 80GB HBM3"


def _step(system, tps, *, mfu=0.3, max_tok=65536, oom=True, date="2026-11-23T10:00:00+00:00", device=GPU, **kw):
    return {"device": device, "system": system, "model": "llama-3.2-1b", "seq_len": 2048, "kind": "step",
            "tokens_per_s": tps, "mfu": mfu, "peak_mem_bytes": 40 * 2**30, "max_tokens_before_oom": max_tok,
            "oom_reached": oom, "micro_batch_tokens": 16384, "step_median_ms": 100.0, "step_p20_ms": 95.0,
            "step_p80_ms": 110.0, "torch": "2.13.0", "commit": "abc123", "date": date, "peak_tflops": 800.0, **kw}


def _sweep(system, tokens, mem, device=GPU):
    return {"device": device, "system": system, "model": "llama-3.2-1b", "seq_len": 2048, "kind": "sweep",
            "micro_batch_tokens": tokens, "peak_mem_bytes": mem, "tokens_per_s": 1000.0 + tokens / 10,
            "date": "2026-11-23T10:00:00+00:00", "commit": "abc123"}


def _head(impl, n, ms, ratio, device=GPU):
    return {"device": device, "impl": impl, "N": n, "H": 2048, "V": 128256, "dtype": "bf16", "inputs": "flat",
            "entropy": 11.7, "fwd_bwd_ms": ms, "floor_ms": ms / ratio, "floor_ratio": ratio, "tflops": 500.0,
            "peak_mem_bytes": 2**30, "torch": "2.13.0", "triton": "3.9.0", "commit": "abc123",
            "date": "2026-11-23T10:00:00+00:00"}


def _iteration(algo, pre, train, floor, device=GPU):
    return {"device": device, "algorithm": algo, "model": "llama-1b-body", "generate_s": 30.0, "rank_s": 1.0,
            "precompute_s": pre, "train_s": train, "other_s": 0.5, "total_s": 31 + pre + train + 0.5,
            "oracle_queries": 704, "pure_fwd_bwd_s": floor, "overhead_ratio": (pre + train) / floor,
            "commit": "abc123", "date": "2026-11-23T10:00:00+00:00"}


def _status(text: str, target_prefix: str) -> str:
    for line in text.splitlines():
        if line.startswith(f"| {target_prefix}"):
            return line.split("|")[2].strip().strip("*")
    raise AssertionError(f"no target row starting {target_prefix!r} in:\n{text}")


def test_missing_results_folder_says_no_gpu_results(tmp_path):
    out = report.build_report(tmp_path / "nope", tmp_path / "REPORT.md")
    text = out.read_text()
    assert "No GPU results recorded yet" in text
    assert _status(text, "MFU") == "not yet measured"
    assert "does not exist" in text


def test_empty_and_malformed_files_are_survivable(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "step-h100.jsonl").write_text("")
    (res / "head-h100.jsonl").write_text('{"device": "x", "impl": "naive"\nnot json\n[1, 2]\n')
    text = report.build_report(res, tmp_path / "REPORT.md").read_text()
    assert "head-h100.jsonl: skipped 3 malformed line(s)" in text
    assert "No step results recorded yet" in text


def test_targets_met_and_not_met_with_tables_and_plots(tmp_path):
    res = tmp_path / "results"
    append_jsonl(res / "step-h100.jsonl", [
        _step("inpo", 50000.0, mfu=0.5, max_tok=262144),
        _step("trl", 20000.0, mfu=0.2, max_tok=32768),
        _step("inpo-naive-head", 30000.0, mfu=0.3, max_tok=65536),
        _sweep("inpo", 4096, 10 * 2**30), _sweep("inpo", 8192, 14 * 2**30), _sweep("trl", 4096, 30 * 2**30),
        _sweep("trl", 8192, 60 * 2**30)])
    append_jsonl(res / "iteration-h100.jsonl", [_iteration("inpo", 5.0, 60.0, 55.0), _iteration("sppo", 5.0, 70.0, 60.0)])
    append_jsonl(res / "head-h100.jsonl", [_head("inpo-triton", 8192, 30.0, 1.2), _head("inpo-triton", 16384, 58.0, 1.15),
                                           _head("naive", 16384, 120.0, 2.5)])
    (res / "games").mkdir()
    (res / "games" / "report.md").write_text("# games\n")
    out = tmp_path / "bench" / "REPORT.md"
    text = report.build_report(res, out).read_text()

    assert "No GPU results recorded yet" not in text
    assert _status(text, "INPO step") == "met"  # 2.5x TRL
    assert _status(text, "MFU") == "met"  # 50%
    assert _status(text, "largest micro-batch") == "met"  # 8x
    assert _status(text, "online iteration") == "met"  # 65/55 = 1.18
    assert "2.50× on NVIDIA H100" in text
    # the step table shows the speed-up over TRL and provenance
    inpo_row = next(line for line in text.splitlines() if line.startswith("| inpo | llama-3.2-1b"))
    assert "2.50×" in inpo_row and "abc123" in inpo_row and "50.0%" in inpo_row and "40.00 GiB" in inpo_row
    # the games report is linked relative to REPORT.md
    assert "(../results/games/report.md)" in text
    # plots exist, are PNGs, and are linked
    plots = res / "plots"
    for name in ("step_memory_vs_batch", "step_throughput_vs_batch", "step_mfu", "iteration_phases",
                 "head_time_vs_shape", "head_floor_ratio"):
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(../results/plots/{name}.png)" in text
    assert not [p for p in plots.iterdir() if "tmp" in p.name]


def test_targets_not_met(tmp_path):
    res = tmp_path / "results"
    append_jsonl(res / "step-h100.jsonl", [_step("inpo", 30000.0, mfu=0.3, max_tok=65536),
                                           _step("trl", 20000.0, max_tok=32768)])
    append_jsonl(res / "iteration-h100.jsonl", [_iteration("inpo", 20.0, 60.0, 50.0)])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "INPO step") == "not met"
    assert _status(text, "MFU") == "not met"
    assert _status(text, "largest micro-batch") == "not met"
    assert _status(text, "online iteration") == "not met"


def test_sweep_limit_is_not_a_capacity_verdict(tmp_path):
    res = tmp_path / "results"
    append_jsonl(res / "step-h100.jsonl", [_step("inpo", 50000.0, max_tok=65536, oom=False),
                                           _step("trl", 20000.0, max_tok=32768)])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "largest micro-batch") == "not yet measured"
    assert "≥ 65,536" in text


def test_latest_record_per_key_wins_and_cpu_smoke_never_judges(tmp_path):
    res = tmp_path / "results"
    append_jsonl(res / "step-h100.jsonl", [_step("inpo", 1000.0, mfu=0.1, date="2026-11-20T00:00:00+00:00"),
                                           _step("inpo", 2000.0, mfu=0.6, date="2026-11-22T00:00:00+00:00")])
    append_jsonl(res / "step-cpu.jsonl", [_step("inpo", 10.0, mfu=0.9, device="cpu-x86_64-2c", smoke=True,
                                                model="tiny")])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "MFU").startswith("met")
    assert "60.0% on NVIDIA H100" in text  # the newer record, not the CPU smoke
    assert "| inpo | tiny (smoke) |" in text  # the smoke record is still listed in the table


def test_latest_helper():
    recs = [{"k": 1, "v": "old", "date": "2026-01-01"}, {"k": 1, "v": "new", "date": "2026-02-01"},
            {"k": 2, "v": "only", "date": "2025-01-01"}]
    assert [r["v"] for r in report.latest(recs, ("k",))] == ["new", "only"]


def test_head_cpu_targets(tmp_path):
    res = tmp_path / "results"
    # the native bench writes lower-case shape keys
    base = dict(device="cpu-x86_64-2c", n=4096, h=512, v=32000, dtype="float32", date="2026-11-23")
    append_jsonl(res / "head-cpu.jsonl", [
        {**base, "impl": "inpo-native", "fwd_bwd_ms": 2300.0, "floor_ratio": 1.05, "peak_mem_bytes": 10 * 2**20},
        {**base, "impl": "torch", "fwd_bwd_ms": 3800.0, "peak_mem_bytes": 60 * 2**20},
        {**base, "impl": "naive", "fwd_bwd_ms": 3100.0, "peak_mem_bytes": 1500 * 2**20},
        {**base, "impl": "gemm-floor", "fwd_bwd_ms": 2200.0}])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "native fwd+bwd") == "met"
    assert _status(text, "native ≥ 1.15×") == "met"  # 3800/2300 = 1.65
    assert _status(text, "native peak memory") == "met"
    assert "at N=4096 H=512 V=32000" in text and "| inpo-native | 4096 | 512 | 32,000 |" in text


def test_cli_main(tmp_path, capsys):
    res = tmp_path / "r"
    append_jsonl(res / "step-cpu.jsonl", [_step("inpo", 10.0, device="cpu-x86_64-2c", smoke=True)])
    out = tmp_path / "R.md"
    assert report.main(["--results", str(res), "--out", str(out), "--no-plots"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert report.main(["--results", str(out), "--out", str(tmp_path / "x.md")]) == 2


@pytest.mark.parametrize("value, kind, expected", [(None, "", "—"), (0.4567, "pct", "45.7%"), (2**31, "bytes", "2.00 GiB"),
                                                    (1.5, "x", "1.50×"), (123456.0, "", "123,456"),
                                                    ("a|b", "", "a\\|b")])
def test_fmt(value, kind, expected):
    assert report.fmt(value, kind) == expected


def _gpu_head(impl, inputs, ms, *, n=16384, h=2048, floor=10.0, mem=2**30, err=1e-5, ok=True, device=GPU):
    return {"device": device, "impl": impl, "N": n, "H": h, "V": 128256, "dtype": "bf16", "inputs": inputs,
            "fwd_bwd_ms": ms, "floor_ms": floor, "floor_ratio": ms / floor, "peak_mem_bytes": mem,
            "value_err": err, "value_ok": ok, "commit": "abc123", "date": "2026-11-23T10:00:00+00:00"}


def _statuses(targets):
    return {t.name: t.status for t in targets}


def test_head_targets_met_not_met_and_not_yet():
    t = report.head_targets([])
    assert set(_statuses(t).values()) == {report.NOT_YET} and len(t) == 5
    recs = [_gpu_head("inpo-triton", "peaked", 11.5), _gpu_head("inpo-triton-chunked", "peaked", 12.5),
            _gpu_head("cce", "peaked", 14.0, mem=2 * 2**30), _gpu_head("liger", "peaked", 50.0),
            _gpu_head("inpo-triton", "flat", 14.0), _gpu_head("cce", "flat", 17.0, mem=2 * 2**30),
            _gpu_head("liger", "flat", 60.0),
            # not judged: a smoke shape, fp32, and a CPU record
            _gpu_head("inpo-triton", "peaked", 99.0, n=256, h=64), dict(_gpu_head("liger", "flat", 1.0), dtype="fp32"),
            _gpu_head("cce", "flat", 1.0, device="cpu-x86_64-2c")]
    st = _statuses(report.head_targets(recs))
    assert all(v == report.MET for v in st.values()), st
    # 1.21× the floor on peaked inputs misses the 1.2× target even though flat (1.4× ≤ 1.45×) passes
    worse = [r for r in recs if not (r["impl"].startswith("inpo-triton") and r["inputs"] == "peaked" and r["N"] == 16384)]
    worse += [_gpu_head("inpo-triton", "peaked", 12.1)]
    targets = {t.name: t for t in report.head_targets(worse)}
    floor = targets["fused head fwd+bwd ≤ 1.2× GEMM floor (peaked), ≤ 1.45× (flat)"]
    assert floor.status == report.NOT_MET and "✗ 1.21×" in floor.detail
    # a fast but wrong kernel meets nothing: its records are not "ours", and the value target fails
    wrong = [r for r in recs if r["impl"] != "inpo-triton"] + [_gpu_head("inpo-triton", "peaked", 5.0, err=0.3, ok=False)]
    targets = {t.name: t for t in report.head_targets(wrong)}
    assert targets["every timed impl matches the fp32 reference"].status == report.NOT_MET
    assert "inpo-triton at 16384×2048×128256 peaked" in targets["every timed impl matches the fp32 reference"].detail
    # the chunked mode (12.5 ms) is what is left for peaked: 1.25× > 1.2×
    assert targets["fused head fwd+bwd ≤ 1.2× GEMM floor (peaked), ≤ 1.45× (flat)"].status == report.NOT_MET
