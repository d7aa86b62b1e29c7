"""``python -m bench.step``: the CPU smoke runs end to end and writes well-formed records; optional baselines skip."""

from __future__ import annotations

import json

import pytest
import torch

from bench import step as step_bench
from bench.lib.shapes import MODEL_SHAPES
from bench.step import StepBenchConfig, make_pairs, smoke_config

REQUIRED = {"device", "system", "model", "seq_len", "tokens_per_s", "mfu", "peak_mem_bytes", "max_tokens_before_oom",
            "torch", "commit", "date"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Smoke shapes are tiny: on a shared 2-core box, OpenMP threads waiting on each other cost 10x the math.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_step_smoke_writes_records(tmp_path):
    out = tmp_path / "step-cpu.jsonl"
    logs: list[str] = []
    cfg = smoke_config(out=str(out), systems=("inpo", "inpo-naive-head", "trl", "liger"), impl="torch",
                       sweep_limit_tokens=256, trace=str(tmp_path / "trace.json"))
    records = step_bench.run(cfg, log=logs.append)
    on_disk = _read(out)
    assert on_disk == json.loads(json.dumps(records, default=str))
    steps = [r for r in on_disk if r["kind"] == "step"]
    sweeps = [r for r in on_disk if r["kind"] == "sweep"]
    optional = {s for s in ("trl", "liger") if not step_bench.skip_reason(s, torch.device("cpu"))}
    assert {r["system"] for r in steps} == {"inpo", "inpo-naive-head"} | optional
    for r in steps:
        assert REQUIRED <= set(r)
        assert r["device"].startswith("cpu") and r["smoke"] is True and r["model"] == "tiny"
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["tokens_per_step"] == cfg.accum * cfg.micro_batch_tokens  # 2 micro-batches of 2 pairs x 64 tokens
        assert r["step_p20_ms"] <= r["step_median_ms"] <= r["step_p80_ms"]
        assert r["max_tokens_before_oom"] == 256 and r["oom_reached"] is False
        assert r["peak_mem_bytes"] is None  # no allocator statistics on CPU
        assert r["nvml"].startswith("no NVML")
        # auto: per-document attention for our packed rows; TRL pads its rows and keeps transformers' sdpa
        assert r["attn_implementation"] == ("sdpa" if r["system"] == "trl" else "inpo_varlen")
    assert {r.get("impl") for r in steps} == {"torch", "naive"} | ({"liger-flce"} if "liger" in optional else set()) \
        | ({None} if "trl" in optional else set())
    for r in steps:
        if r["system"] == "trl":  # TRL's configs default to gradient checkpointing; ours keeps activations
            assert r["gradient_checkpointing"] is False and r["runs_own_loop"] is True
    # the sweep doubled from one pair (128 tokens) to the limit
    assert sorted({r["micro_batch_tokens"] for r in sweeps}) == [128, 256]
    if not step_bench.available("trl"):
        assert "[bench step] trl: trl not installed — skipped" in logs
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]


@pytest.mark.skipif(step_bench.available("trl"), reason="checks the message when trl is absent")
def test_trl_absent_is_a_clean_skip():
    assert step_bench.skip_reason("trl", torch.device("cpu")) == "trl not installed — skipped"
    logs: list[str] = []
    records = step_bench.run(smoke_config(systems=("trl",), out="/nonexistent/never-written.jsonl"),
                             log=logs.append)
    assert records == []
    assert any(line.endswith("trl: trl not installed — skipped") for line in logs)


def test_liger_skip_reason_without_it():
    if step_bench.available("liger_kernel"):
        pytest.skip("liger-kernel is installed here")
    assert "liger-kernel not installed" in step_bench.skip_reason("liger", torch.device("cpu"))


def test_liger_step_matches_ours():
    """The Liger variant (per-token NLL from Liger's fused linear CE, summed per sequence) computes the same loss as
    our fused head on the same model and data (runs where liger-kernel is importable; CPU via the interpreter)."""
    pytest.importorskip("liger_kernel")
    cfg = smoke_config(impl="torch", seq_len=16, micro_batch_tokens=64)
    ours = step_bench.prepare("inpo", cfg, torch.device("cpu"), 64)
    liger = step_bench.prepare("liger", cfg, torch.device("cpu"), 64)
    assert liger.info["impl"] == "liger-flce"
    assert liger.step()["loss"] == pytest.approx(ours.step()["loss"], rel=1e-4)


def test_make_pairs_shapes():
    seqs = make_pairs(3, 16, 100, seed=0)
    assert len(seqs) == 6
    for i in range(0, 6, 2):
        assert seqs[i][0] == seqs[i + 1][0]  # a pair shares its prompt
        assert len(seqs[i][0]) + len(seqs[i][1]) == 16
    assert min(t for p, r in seqs for t in p + r) >= 4


@pytest.mark.parametrize("kw, match", [(dict(model="gpt5"), "model"), (dict(micro_batch_tokens=100), "one pair"),
                                       (dict(systems=("inpo", "vllm")), "systems"), (dict(accum=0), "accum"),
                                       (dict(attn="xformers"), "attn")])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        smoke_config(**kw).validate()


def test_cli_bad_flag_value(capsys):
    assert step_bench.main(["--smoke", "--micro-batch-tokens", "10"]) == 2
    assert "micro_batch_tokens" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_full_size_on_cpu_is_refused(capsys):
    assert step_bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_word_level_tokenizer_roundtrips_ids():
    tok = step_bench.word_level_tokenizer(64)
    ids = [5, 17, 63, 4]
    text = " ".join(f"t{i}" for i in ids)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok(text + "</s>", add_special_tokens=False)["input_ids"] == ids + [tok.eos_token_id]


def test_full_size_defaults_match_the_issue():
    cfg = StepBenchConfig()
    shape = MODEL_SHAPES[cfg.model]
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]) == (2048, 16, 128256)
    assert cfg.seq_len == 2048 and set(cfg.systems) == {"inpo", "trl", "inpo-naive-head", "liger"}


@pytest.mark.gpu
@pytest.mark.slow
def test_step_gpu_quick(tmp_path):
    out = tmp_path / "step.jsonl"
    step_bench.run(StepBenchConfig(model="llama-3.2-1b", seq_len=512, micro_batch_tokens=4096, reps=2, warmup=1,
                                   systems=("inpo",), sweep=False, out=str(out)))
    (rec,) = _read(out)
    assert rec["peak_mem_bytes"] > 0 and rec["mfu"] > 0.05


def test_benchmark_tiny_train_step(benchmark):
    """pytest-benchmark entry: one optimiser step of the smoke model (2 micro-batches of 2 pairs x 64 tokens)."""
    cfg = smoke_config(impl="torch")
    p = step_bench.prepare("inpo", cfg, torch.device("cpu"), cfg.micro_batch_tokens)
    try:
        stats = benchmark.pedantic(p.step, rounds=3, warmup_rounds=1)
    finally:
        p.cleanup()
    assert stats["tokens"] == p.tokens_per_step == 512 and stats["loss"] > 0


def test_sweep_records_survive_a_main_measurement_cut_off(tmp_path, monkeypatch):
    """On the device a 10-minute limit can kill a system mid-run: its sweep records are on disk already."""
    out = tmp_path / "step.jsonl"
    real = step_bench._measure_point

    def measure_point(system, cfg, device, micro_tokens, *, nvml, **kw):
        if nvml:  # the main measurement (sweep points run without NVML)
            raise KeyboardInterrupt("killed at the deadline")
        return real(system, cfg, device, micro_tokens, nvml=nvml, **kw)

    monkeypatch.setattr(step_bench, "_measure_point", measure_point)
    with pytest.raises(KeyboardInterrupt):
        step_bench.run(smoke_config(out=str(out), systems=("inpo",), impl="torch", sweep_limit_tokens=256),
                       log=lambda _: None)
    recs = _read(out)
    assert [r["kind"] for r in recs] == ["sweep", "sweep"] and {r["max_tokens_before_oom"] for r in recs} == {256}


def test_attn_implementation_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_bench.attn_implementation(cpu) == "inpo_varlen"
    assert step_bench.attn_implementation(cuda, "flex_attention") == "flex_attention"
    if not step_bench.available("flash_attn"):
        assert step_bench.attn_implementation(cuda) == "inpo_varlen"
    with pytest.raises(ValueError, match="attn"):
        step_bench.attn_implementation(cpu, "xformers")
