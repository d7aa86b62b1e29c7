"""``python -m bench.report``: tables, targets and plots from synthetic records; robust to empty/missing/bad files."""

from __future__ import annotations


import pytest

from bench import report
from bench.report import data, fmt, targets
from inpo.utils.record import append_jsonl

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
    assert [r["v"] for r in data.latest(recs, ("k",))] == ["new", "only"]


def _head_cpu(impl, ms, *, ratio=None, mem=None, date="2026-11-29T10:00:00+00:00", **kw):
    # the native bench writes lower-case shape keys
    r = dict(device="cpu-x86_64-2c", n=4096, h=512, v=32000, dtype="float32", date=date, impl=impl, fwd_bwd_ms=ms,
             peak_mem_bytes=mem, floor_kind="8NHV at the measured fp32 GEMM peak", floor_8nhv_ms=1000.0,
             floor_ratio=ms / 1000.0 if ratio is None else ratio, floor_ratio_6nhv=ms / 750.0, peak_gflop_s=67.1,
             loadavg_1m=[3.0, 9.5], threads=2)
    r.update(kw)
    return r


def test_head_cpu_targets(tmp_path):
    res = tmp_path / "results"
    legacy = dict(device="cpu-x86_64-2c", n=4096, h=512, v=32000, dtype="float32", date="2026-11-23")
    append_jsonl(res / "head-cpu.jsonl", [
        # an old run whose "floor" was four materialised GEMMs: superseded, neither judged nor listed
        {**legacy, "impl": "inpo-native", "fwd_bwd_ms": 2300.0, "floor_ratio": 0.7, "peak_mem_bytes": 10 * 2**20},
        {**legacy, "impl": "gemm-floor", "fwd_bwd_ms": 3300.0},
        _head_cpu("inpo-native", 1240.0, mem=10 * 2**20), _head_cpu("torch", 1500.0, mem=60 * 2**20),
        _head_cpu("naive", 3100.0, mem=1500 * 2**20), _head_cpu("aten-gemms", 1800.0)])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "native fwd+bwd ≤ 1.25× the 8NHV floor") == "met"  # 1.24x
    assert "1.24× the 8NHV floor (1.65× the 6NHV floor; peak 67.1 GFLOP/s) at N=4096 H=512 V=32000" in text
    assert _status(text, "native ≥ 1.15×") == "met"  # 1500/1240 = 1.21
    assert _status(text, "native peak memory") == "met"
    assert "| inpo-native | 4096 | 512 | 32,000 |" in text and "gemm-floor" not in text
    assert "| 3.0–9.5 |" in text  # the load seen during the run
    append_jsonl(res / "head-cpu.jsonl", [_head_cpu("inpo-native", 1260.0, mem=10 * 2**20,
                                                    date="2026-11-29T11:00:00+00:00")])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "native fwd+bwd ≤ 1.25× the 8NHV floor") == "not met"  # 1.26x
    # a "floor" the head beats was no floor: the peak measurement failed, nothing is judged
    append_jsonl(res / "head-cpu.jsonl", [_head_cpu("inpo-native", 920.0, mem=10 * 2**20,
                                                    date="2026-11-29T12:00:00+00:00")])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "native fwd+bwd ≤ 1.25× the 8NHV floor") == "not yet measured"
    assert "invalid peak: the native head ran 1.09× faster than its 'floor'" in text
    # a timing-only re-run (--mem off) keeps the memory verdict of the latest run that measured memory
    append_jsonl(res / "head-cpu.jsonl", [_head_cpu("inpo-native", 1100.0, date="2026-11-29T13:00:00+00:00")])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert _status(text, "native peak memory") == "met" and "0.007 of naive at N=4096 H=512 V=32000 (run of" in text


def test_head_cpu_legacy_records_are_not_judged_against_a_floor():
    legacy = dict(device="cpu-x86_64-2c", N=4096, H=512, V=32000, dtype="float32", date="2026-11-23")
    t = targets.head_cpu_targets([{**legacy, "impl": "inpo-native", "fwd_bwd_ms": 2300.0, "floor_ratio": 0.7},
                                 {**legacy, "impl": "gemm-floor", "fwd_bwd_ms": 3300.0}])
    assert t[0].status == targets.NOT_YET and "predates the measured-peak floor" in t[0].detail


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
    assert fmt.fmt(value, kind) == expected


def _gpu_head(impl, inputs, ms, *, n=16384, h=2048, floor=10.0, mem=2**30, err=1e-5, ok=True, device=GPU, exact=True):
    return {"device": device, "impl": impl, "N": n, "H": h, "V": 128256, "dtype": "bf16", "inputs": inputs,
            "fwd_bwd_ms": ms, "floor_ms": floor, "floor_ratio": ms / floor, "peak_mem_bytes": mem,
            "value_err": err, "value_ok": ok, "commit": "abc123", "date": "2026-11-23T10:00:00+00:00",
            "exact": exact}


def _statuses(targets):
    return {t.name: t.status for t in targets}


def test_head_targets_met_not_met_and_not_yet():
    names = targets.HEAD_TARGET_NAMES
    t = targets.head_targets([])
    assert set(_statuses(t).values()) == {targets.NOT_YET} and len(t) == len(names) == 7
    # exact 13.5 ms = 1.35x the floor, CCE 14 ms (no slower), filter 11.5 ms = 1.15x and 14/11.5 = 1.22x CCE,
    # Liger 60 ms = 4.4x the exact head, memory 1 GiB vs CCE's 2 GiB
    recs = [_gpu_head("inpo-triton", "peaked", 13.5), _gpu_head("inpo-triton-chunked", "peaked", 16.0),
            _gpu_head("inpo-triton-filter", "peaked", 11.5, exact=False), _gpu_head("cce", "peaked", 14.0, mem=2**31),
            _gpu_head("liger", "peaked", 60.0),
            # not judged: flat inputs, another shape, fp32, a CPU record
            _gpu_head("inpo-triton", "flat", 99.0), _gpu_head("inpo-triton", "peaked", 99.0, n=8192, h=4096),
            dict(_gpu_head("liger", "peaked", 1.0), dtype="fp32"),
            _gpu_head("cce", "peaked", 1.0, device="cpu-x86_64-2c")]
    st = _statuses(targets.head_targets(recs))
    assert all(v == targets.MET for v in st.values()), st

    def judged(records):
        return {k: t for k, t in zip(names, targets.head_targets(records))}

    # each bound, just missed
    def swap(impl, ms, **kw):
        return [r for r in recs if not (r["impl"] == impl and r["N"] == 16384 and r["inputs"] == "peaked"
                                        and r["dtype"] == "bf16" and r["device"] == GPU)] + [
            _gpu_head(impl, "peaked", ms, **kw)]

    j = judged(swap("inpo-triton", 14.1))  # 1.41x the floor and slower than CCE; chunked (16) is slower still
    assert j["exact_floor"].status == targets.NOT_MET and "✗ 1.41×" in j["exact_floor"].detail
    assert j["exact_cce"].status == targets.NOT_MET and j["liger"].status == targets.MET
    j = judged(swap("inpo-triton-filter", 12.1, exact=False))  # 1.21x the floor, 14/12.1 = 1.157x CCE
    assert j["filter_floor"].status == targets.NOT_MET and j["filter_cce"].status == targets.NOT_MET
    assert j["exact_floor"].status == targets.MET
    j = judged(swap("liger", 53.0))  # 53/13.5 = 3.93x
    assert j["liger"].status == targets.NOT_MET
    j = judged(swap("cce", 14.0, mem=2**29))
    assert j["mem"].status == targets.NOT_MET
    # a record that is not exact (the pre-exact API filtered by default) is not judged as the exact head
    j = judged(swap("inpo-triton", 13.5, exact=False))
    assert "inpo-triton-chunked" in j["exact_floor"].detail and j["exact_floor"].status == targets.NOT_MET  # 1.6x
    # a fast but wrong kernel meets nothing: its records are not "ours", and the value target fails
    j = judged(swap("inpo-triton", 5.0, err=0.3, ok=False))
    assert j["value"].status == targets.NOT_MET and "inpo-triton at 16384×2048×128256 peaked" in j["value"].detail
    assert "inpo-triton-chunked" in j["exact_floor"].detail


def test_mfu_target_names_the_peak_it_divided_by():
    """New step records carry the trainer's MFU (datasheet peak) and say so; older ones divided by a measured GEMM."""
    ours = _step("inpo", 1000.0, mfu=0.5, mfu_peak_source="datasheet", mfu_peak_tflops=989.0)
    (t,) = [t for t in targets.step_targets([ours, _step("trl", 500.0)]) if t.name.startswith("MFU")]
    assert t.status == targets.MET and "datasheet peak 989.0 TFLOP/s" in t.detail
    (t,) = [t for t in targets.step_targets([_step("inpo", 1000.0, mfu=0.4)]) if t.name.startswith("MFU")]
    assert t.status == targets.NOT_MET and "peak 800.0 TFLOP/s measured by a bf16 GEMM" in t.detail
