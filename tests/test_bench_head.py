"""The head benchmark: the CPU smoke writes well-formed records; a pytest-benchmark entry for the CPU head."""

import json
import math

import pytest
import torch

from bench import head as head_bench

KEYS = {"device", "impl", "N", "H", "V", "dtype", "inputs", "entropy", "fwd_bwd_ms", "floor_ms", "floor_ratio",
        "tflops", "peak_mem_bytes", "torch", "triton", "commit", "date"}


def test_smoke_writes_well_formed_records(tmp_path, capsys):
    out = tmp_path / "head.jsonl"
    rc = head_bench.main(["--smoke", "--shapes", "128x32x500", "--impls", "naive,inpo-torch,inpo-triton,gemm-floor,cce",
                          "--out", str(out)])
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * 5  # flat + peaked, five impls
    for r in records:
        assert KEYS <= set(r), KEYS - set(r)
        assert (r["N"], r["H"], r["V"], r["dtype"]) == (128, 32, 500, "fp32")
        assert 0.0 < r["entropy"] < math.log(500)
        if r["impl"] == "cce":  # GPU-only baseline: skipped with a reason, never an error
            assert r["fwd_bwd_ms"] is None and r["skipped"]
            continue
        assert "error" not in r, r
        assert r["fwd_bwd_ms"] > 0 and r["floor_ms"] > 0 and r["tflops"] > 0
        assert r["floor_ratio"] == pytest.approx(r["fwd_bwd_ms"] / r["floor_ms"])
        assert r["tflops"] == pytest.approx(6 * 128 * 32 * 500 / (r["fwd_bwd_ms"] * 1e-3) / 1e12)
        if r["impl"] != "gemm-floor":  # every timed impl's forward was checked against the fp32 reference
            assert r["value_ok"] is True and 0 <= r["value_err"] < 1e-5, r
    by_inputs = {r["inputs"]: r["entropy"] for r in records}
    assert by_inputs["flat"] > 5.0  # near log(500) = 6.2
    assert 1.0 < by_inputs["peaked"] < 2.0  # bisected to 1.5 nats
    assert "records appended" in capsys.readouterr().out


def test_smoke_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(head_bench, "RESULTS_DIR", tmp_path)
    assert head_bench.main(["--smoke", "--shapes", "64x16x100", "--impls", "inpo-torch", "--inputs", "flat"]) == 0
    assert not list(tmp_path.iterdir())
    assert "not written" in capsys.readouterr().out


def test_peaked_inputs_hit_the_target_entropy():
    p = head_bench.make_problem(300, 32, 2000, torch.float32, torch.device("cpu"), "peaked", seed=3)
    assert abs(p.entropy - head_bench.PEAKED_ENTROPY) < 0.3
    assert p.cu_seqlens[-1].item() == 300 and p.seg.shape == (300,)


@pytest.mark.parametrize("argv, match", [
    (["--shapes", "10x20"], "NxHxV"),
    (["--impls", "inpo-cuda"], "--impls must be"),
    (["--inputs", "spiky"], "--inputs must be"),
])
def test_cli_rejects_bad_flags(argv, match, capsys):
    with pytest.raises(SystemExit):
        head_bench.main(argv)
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["inpo-torch", "naive"])
def test_benchmark_cpu_head(benchmark, impl, monkeypatch):
    """pytest-benchmark entry: fwd+bwd of the CPU head at a small shape (timings are noisy on shared CPUs).

    What it asserts: the timed closure really ran the forward and the backward of the impl, with the bench's
    upstream gradient: after the rounds, its inputs hold gradients equal to the fp64 reference's (a closure
    that skipped its backward, or timed another problem, fails), and every round was timed."""
    from inpo.ops.naive import sequence_logps_naive

    seen = {}
    real = head_bench._head_runner

    def recording(name):
        fn = real(name)
        return lambda p, x, w: seen.update(x=x, w=w) or fn(p, x, w)

    monkeypatch.setattr(head_bench, "_head_runner", recording)
    p = head_bench.make_problem(512, 64, 4000, torch.float32, torch.device("cpu"), "flat")
    fn = head_bench.fwd_bwd_fn(impl, p)
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    if not benchmark.disabled:
        assert len(benchmark.stats.stats.data) == 3 and benchmark.stats.stats.min > 0
    x64 = p.hidden.double().requires_grad_(True)
    w64 = p.weight.double().requires_grad_(True)
    sequence_logps_naive(x64, w64, p.labels, p.cu_seqlens).backward(p.upstream.double())
    assert seen["x"].grad is not None and seen["w"].grad is not None, "the timed call ran no backward"
    for got, ref in ((seen["x"].grad, x64.grad), (seen["w"].grad, w64.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


def test_a_wrong_impl_is_flagged_and_fails_the_run(tmp_path, monkeypatch, capsys):
    """The bench holds each impl's forward to the fp32 reference: an impl off by 1% is recorded as a mismatch
    (value_ok False), named on stderr, and the run exits 1 -- a fast but wrong kernel cannot post a number."""
    real = head_bench._head_runner

    def runner(impl):
        fn = real(impl)
        return (lambda p, x, w: fn(p, x, w) * 1.01) if impl == "naive" else fn

    monkeypatch.setattr(head_bench, "_head_runner", runner)
    out = tmp_path / "head.jsonl"
    rc = head_bench.main(["--smoke", "--shapes", "96x16x300", "--impls", "inpo-torch,naive", "--inputs", "flat",
                          "--out", str(out)])
    recs = {r["impl"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rc == 1
    assert recs["inpo-torch"]["value_ok"] is True
    assert recs["naive"]["value_ok"] is False and recs["naive"]["value_err"] == pytest.approx(0.01, rel=1e-3)
    assert "VALUE MISMATCH" in capsys.readouterr().err


def test_liger_runs_per_sequence_like_ours(monkeypatch):
    """Liger is timed on the same task as ours and CCE: per-sequence log-probs under a per-sequence upstream
    gradient (reduction="none" + segment sum), so its values and gradients match our head's (CPU: interpreter)."""
    liger = pytest.importorskip("liger_kernel.transformers")
    if head_bench.unavailable_reason("liger", torch.device("cpu")):
        pytest.skip("Liger needs TRITON_INTERPRET=1 on CPU")
    del liger
    p = head_bench.make_problem(128, 32, 500, torch.float32, torch.device("cpu"), "flat")
    grads = {}
    for impl in ("liger", "inpo-torch"):
        x = p.hidden.detach().requires_grad_(True)
        w = p.weight.detach().requires_grad_(True)
        out = head_bench._head_runner(impl)(p, x, w)
        assert out.shape == p.upstream.shape
        out.backward(p.upstream)
        grads[impl] = (out.detach(), x.grad, w.grad)
    for a, b in zip(grads["liger"], grads["inpo-torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
