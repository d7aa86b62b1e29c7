"""The side-by-side CPU benches (issue 14 §5, issue 11 §6): data, intervals, floors, and how the report judges them."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from bench import head_cpu as native_bench
from bench import report
from bench.report import targets
from inpo.utils.record import append_jsonl
from bench.step import EOS_ID, StepBenchConfig, bench_pairs, make_variable_pairs
from bench.step_cpu import bootstrap_median_ci

CPU = "cpu-x86_64-2c"


# ---- data ----------------------------------------------------------------------------------------------------

def test_variable_pairs_share_prompts_vary_in_length_and_fit():
    seqs = make_variable_pairs(64, 512, 32000, seed=3)
    assert len(seqs) == 128
    lens = [len(p) + len(r) for p, r in seqs]
    assert max(lens) <= 512 and min(lens) >= 16 + 8
    assert len(set(lens)) > 40  # variable, not a few fixed sizes
    assert 0.4 * 512 < statistics.mean(lens) < 0.7 * 512
    for i in range(0, len(seqs), 2):
        assert seqs[i][0] == seqs[i + 1][0]  # chosen and rejected share the prompt
    assert all(r[-1] == EOS_ID and EOS_ID not in r[:-1] for _, r in seqs)  # TRL appends eos: so do we
    assert all(4 <= t < 32000 for p, r in seqs for t in p + r[:-1])
    assert make_variable_pairs(64, 512, 32000, seed=3) == seqs  # reproducible
    with pytest.raises(ValueError, match="max_len"):
        make_variable_pairs(2, 40, 100, seed=0)


def test_bench_pairs_dispatches_on_lengths():
    fixed = bench_pairs(StepBenchConfig(model="tiny", seq_len=64), 3)
    assert {len(p) + len(r) for p, r in fixed} == {64}
    var = bench_pairs(StepBenchConfig(model="tiny", seq_len=64, lengths="variable"), 3)
    assert len({len(p) + len(r) for p, r in var}) > 1
    with pytest.raises(ValueError, match="lengths must be one of"):
        StepBenchConfig(model="tiny", seq_len=64, micro_batch_tokens=256, lengths="ragged").validate()


def test_bootstrap_median_ci_brackets_the_median():
    xs = [10.0, 11.0, 12.0, 13.0, 50.0]
    lo, hi = bootstrap_median_ci(xs)
    assert lo <= statistics.median(xs) <= hi and lo >= 10.0 and hi <= 50.0
    assert bootstrap_median_ci(xs) == (lo, hi)  # seeded
    assert bootstrap_median_ci([5.0]) == (5.0, 5.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_median_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_median_ci(xs, level=1.5)


# ---- the CPU head floor --------------------------------------------------------------------------------------

def test_floors_are_flops_at_the_peak():
    f = native_bench.floors_ms(4096, 512, 32000, 100e9)
    assert f["floor_8nhv_ms"] == pytest.approx(8 * 4096 * 512 * 32000 / 100e9 * 1e3)
    assert f["floor_6nhv_ms"] == pytest.approx(0.75 * f["floor_8nhv_ms"])
    with pytest.raises(ValueError, match="peak_flops"):
        native_bench.floors_ms(1, 1, 1, 0.0)
    gemm = native_bench.peak_gemm_fn(64, m=128)
    assert gemm.flops >= 2e8 and native_bench._time_rate(gemm) > 0


def test_head_cpu_smoke_records_the_peak_and_both_floors(tmp_path):
    out = tmp_path / "head-cpu.jsonl"
    assert native_bench.main(["--smoke", "--impls", "torch,aten-gemms", "--mem", "off", "--reps", "2",
                              "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in recs] == ["torch", "aten-gemms"]
    n, h, v = native_bench.SMOKE_SHAPE
    for r in recs:
        peak = r["peak_flops"]
        assert r["peak_gflop_s"] == pytest.approx(peak / 1e9, abs=0.01)
        assert r["floor_8nhv_ms"] == pytest.approx(8 * n * h * v / peak * 1e3, rel=1e-3)
        assert r["floor_6nhv_ms"] == pytest.approx(6 * n * h * v / peak * 1e3, rel=1e-3)
        # fwd_bwd_ms is stored rounded to 1 us; the ratio comes from the unrounded median
        assert r["floor_ratio"] == pytest.approx(r["fwd_bwd_ms"] / r["floor_8nhv_ms"], rel=0.02)
        # the peak is the best rate seen (a floor must be a lower bound on time), never below the median rate
        assert r["peak_gflop_s"] >= r["peak_gflop_s_median"]
        assert r["command"].startswith("python -m bench.head_cpu --smoke") and len(r["loadavg_1m"]) == 3
        assert r["fwd_bwd_p20_ms"] <= r["fwd_bwd_ms"] <= r["fwd_bwd_p80_ms"]


# ---- how the report judges the CPU comparison ----------------------------------------------------------------

def _cmp(system, tps, mem, *, commit="c1", smoke=False, date="2026-11-29T10:00:00+00:00"):
    return {"device": CPU, "kind": "cpu-compare", "system": system, "model": "cpu-22m", "seq_len": 512,
            "tokens_per_s": tps, "tokens_per_s_ci90": [0.9 * tps, 1.1 * tps], "peak_mem_bytes": mem,
            "step_mem_bytes": mem // 4, "step_median_ms": 1000.0, "step_ci90_ms": [900.0, 1100.0],
            "pairs_per_step": 4, "tokens_per_step": 2000, "commit": commit, "smoke": smoke, "date": date,
            "loadavg_1m": [5.0, 7.0], "torch_threads": 1}


def _targets(steps=(), iters=(), gens=()):
    return {t.name.split(":")[0].split(" (")[0]: t for t in targets.cpu_targets(list(steps), list(iters), list(gens))}


def test_cpu_step_targets():
    t = targets.cpu_targets([], [], [])
    assert {x.status for x in t} == {targets.NOT_YET}
    met = [_cmp("inpo", 1500.0, 400 * 2**20), _cmp("trl", 1000.0, 800 * 2**20), _cmp("inpo-naive-head", 900.0, 10**9)]
    got = targets.cpu_targets(met, [], [])
    assert got[0].status == targets.MET and got[0].detail.startswith("1.50×")
    assert "conservative 90% range 1.23–1.83×" in got[0].detail
    assert got[1].status == targets.MET and got[1].detail.startswith("0.50×")
    slow = [_cmp("inpo", 1490.0, 401 * 2**20), _cmp("trl", 1000.0, 800 * 2**20)]
    got = targets.cpu_targets(slow, [], [])
    assert got[0].status == targets.NOT_MET and got[1].status == targets.NOT_MET
    # smoke records and records of different runs are not compared
    assert targets.cpu_targets([_cmp("inpo", 9e9, 1, smoke=True), _cmp("trl", 1.0, 10**9, smoke=True)], [],
                              [])[0].status == targets.NOT_YET
    assert targets.cpu_targets([_cmp("inpo", 9e9, 1), _cmp("trl", 1.0, 10**9, commit="c2")], [],
                              [])[0].status == targets.NOT_YET


def test_cpu_iteration_and_generation_targets():
    it = {"device": CPU, "algorithm": "inpo", "model": "cpu-22m-body", "overhead_ratio": 1.29, "precompute_s": 1.0,
          "train_s": 2.87, "pure_fwd_bwd_s": 3.0, "date": "2026-11-29"}
    smoke = dict(it, algorithm="sppo", smoke=True, overhead_ratio=9.0)
    gpu = dict(it, device="NVIDIA H100", algorithm="dno", overhead_ratio=9.0)
    t = [x for x in targets.cpu_targets([], [it, smoke, gpu], []) if "online iteration" in x.name]
    assert len(t) == 1 and t[0].status == targets.MET and "(inpo)" in t[0].name
    t = [x for x in targets.cpu_targets([], [dict(it, overhead_ratio=1.31)], []) if "online iteration" in x.name]
    assert t[0].status == targets.NOT_MET
    gens = [{"device": CPU, "sampler": "hf", "model": "cpu-22m", "tokens_per_s": 300.0, "date": "d"},
            {"device": CPU, "sampler": "vllm", "model": "cpu-22m", "tokens_per_s": 900.0, "engine_start_s": 40.0,
             "break_even_rows": 120.0, "date": "d"}]
    g = targets.cpu_targets([], [], gens)[-1]
    assert g.status == "measured" and g.detail.startswith("vllm is faster") and "120 sampled rows" in g.detail
    g = targets.cpu_targets([], [], [dict(gens[0], tokens_per_s=1000.0), gens[1]])[-1]
    assert g.detail.startswith("hf is faster")


def test_report_renders_the_cpu_section(tmp_path):
    res = tmp_path / "results"
    append_jsonl(res / "step-cpu.jsonl", [_cmp("inpo", 1500.0, 400 * 2**20), _cmp("trl", 1000.0, 800 * 2**20)])
    append_jsonl(res / "generation-cpu.jsonl", [
        {"device": CPU, "sampler": "hf", "model": "cpu-22m", "tokens_per_s": 300.0, "median_s": 2.0,
         "ci90_s": [1.9, 2.1], "rows": 64, "new_tokens": 8192, "date": "2026-11-29T10:00:00+00:00", "commit": "c1"}])
    text = report.build_report(res, tmp_path / "REPORT.md", plots=False).read_text()
    assert "## Measured on CPU: inpo vs TRL, HF vs vLLM" in text
    assert "| inpo | cpu-22m | 512 | 4 | 2000 | 1,000 (900.0–1,100) | 1,500 |" in text
    assert "| hf | cpu-22m | 64 | 8192 | 2 (1.9–2.1) | 300.0 |" in text
    assert "No step results recorded yet" in text  # cpu-compare records are not GPU step records


# ---- the bench CLIs refuse bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, msg", [(["--pairs", "3", "--accum", "2"], "--pairs must be a positive multiple"),
                                       (["--systems", "inpo,liger"], "--systems must be"),
                                       (["--model", "gpt9"], "--model must be one of")])
def test_step_cpu_cli_rejects_bad_arguments(argv, msg, capsys, tmp_path):
    from bench import step_cpu as step_cpu_bench

    assert step_cpu_bench.main([*argv, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_generation_cli_rejects_bad_arguments(capsys, tmp_path):
    from bench import generation as generation_bench

    assert generation_bench.main(["--samplers", "hf,sglang", "--k", "0", "--out", str(tmp_path / "g.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--samplers must be" in err and "--k must be >= 1" in err and not (tmp_path / "g.jsonl").exists()


def test_hf_generation_side_gives_fixed_length_distinct_samples(tmp_path):
    from bench import generation as generation_bench

    prompts = generation_bench.make_prompts(3, 512, seed=1, min_len=4, max_len=9)
    assert all(4 <= len(p) <= 9 for p in prompts) and len({len(p) for p in prompts}) > 1
    generation_bench.save_policy("tiny", tmp_path, seed=0)
    gen = generation_bench.HFGen(tmp_path, max_new_tokens=6, batch=4)
    out = gen.generate(prompts, k=2, seed=5)
    assert len(out) == 6 and all(len(r) == 6 for r in out)
    assert len({tuple(r) for r in out}) == 6  # left padding + sampling: every row its own sample
    assert gen.generate(prompts, k=2, seed=5) == out  # seeded


@pytest.mark.slow
def test_step_cpu_smoke_without_trl(tmp_path):
    """The interleaved CPU step bench end to end on the tiny model (ours and the naive head, no memory probes)."""
    from bench import step_cpu as step_cpu_bench

    out = tmp_path / "s.jsonl"
    assert step_cpu_bench.main(["--smoke", "--systems", "inpo,inpo-naive-head", "--no-mem", "--reps", "2",
                                "--threads", "1", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["system"] for r in recs] == ["inpo", "inpo-naive-head"]
    assert recs[0]["tokens_per_step"] == recs[1]["tokens_per_step"]  # the same pairs
    for r in recs:
        assert len(r["samples_ms"]) == 2 and r["step_ci90_ms"][0] <= r["step_median_ms"] <= r["step_ci90_ms"][1]
        assert r["kind"] == "cpu-compare" and r["lengths"] == "variable" and r["command"].startswith("python -m bench.step_cpu")
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (r["step_median_ms"] / 1e3))
    assert torch.get_num_threads() >= 1
