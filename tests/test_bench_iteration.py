"""``python -m bench.iteration``: the CPU smoke runs the trainer's online loop and records phase times and the floor."""

from __future__ import annotations

import json

import pytest
import torch

from bench import iteration as iteration_bench
from bench.iteration import PHASES, smoke_config
from bench.lib.shapes import body


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny shapes on a shared 2-core box: OpenMP threads waiting on each other cost more than the math.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check(records, algorithms):
    assert [r["algorithm"] for r in records] == list(algorithms)
    for r in records:
        assert r["device"].startswith("cpu") and r["smoke"] is True and r["iteration"] == 0
        for p in PHASES:
            assert r[f"{p}_s"] is not None and r[f"{p}_s"] >= 0, p
        assert r["generate_s"] > 0 and r["train_s"] > 0
        assert r["oracle_queries"] > 0
        assert r["pure_fwd_bwd_s"] == pytest.approx(r["pure_fwd_s"] + r["pure_train_s"])
        assert r["pure_fwd_bwd_s"] > 0 and r["precompute_passes"] == 1  # t = 0: π_t = π_ref, one pass
        assert r["overhead_ratio"] == pytest.approx((r["precompute_s"] + r["train_s"]) / r["pure_fwd_bwd_s"])
        assert r["total_s"] >= r["generate_s"] + r["train_s"]
        for key in ("torch", "commit", "date", "model"):
            assert key in r


def test_iteration_smoke_inpo(tmp_path):
    out = tmp_path / "iteration-cpu.jsonl"
    records = iteration_bench.run(smoke_config(algorithms=("inpo",), out=str(out), workdir=str(tmp_path / "w")),
                                  log=lambda s: None)
    _check(records, ["inpo"])
    assert [json.loads(x) for x in out.read_text().splitlines()] == json.loads(json.dumps(records, default=str))
    assert records[0]["objective"] == "inpo" and records[0]["pairs"] >= 1


@pytest.mark.slow
def test_iteration_smoke_all_algorithms(tmp_path):
    records = iteration_bench.run(smoke_config(out=str(tmp_path / "it.jsonl")), log=lambda s: None)
    _check(records, ["inpo", "sppo", "dno"])
    sppo = records[1]
    assert sppo["objective"] == "sppo" and sppo["sequences"] == sppo["n_prompts"] * sppo["k"]
    assert records[2]["objective"] == "dpo"  # DNO-style = regression against π_t


def test_pure_fwd_bwd_counts_passes():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, **body("tiny-body")))
    seqs = [([5, 6, 7], [8, 9, 10, 11]) for _ in range(8)]
    one = iteration_bench.pure_fwd_bwd_seconds(model, seqs, pairwise=True, max_tokens=64, batch_units=2, epochs=1,
                                               precompute_passes=1, impl="torch", reps=1)
    assert one["train_tokens_per_epoch"] == 8 * 7
    assert one["pure_fwd_bwd_s"] == pytest.approx(one["pure_fwd_s"] + one["pure_train_s"])
    assert all(p.grad is None for p in model.parameters())  # the floor leaves no gradients behind
    with pytest.raises(ValueError, match="reps"):
        iteration_bench.pure_fwd_bwd_seconds(model, seqs, pairwise=True, max_tokens=64, batch_units=2, epochs=1,
                                             precompute_passes=1, reps=0)


@pytest.mark.parametrize("kw, match", [(dict(algorithms=("rlhf",)), "algorithms"), (dict(model="gpt"), "model"),
                                       (dict(iterations=0), "iterations")])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        smoke_config(**kw).validate()


def test_cli_rejects_bad_set_and_full_size_on_cpu(capsys):
    assert iteration_bench.main(["--smoke", "--set", "k"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert iteration_bench.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.slow
def test_iteration_gpu_small(tmp_path):
    records = iteration_bench.run(smoke_config(device="cuda", algorithms=("inpo",), iterations=2,
                                               out=str(tmp_path / "it.jsonl")), log=lambda s: None)
    assert [r["iteration"] for r in records] == [0, 1] and records[1]["precompute_passes"] == 2
    assert records[0]["peak_mem_bytes"] > 0 and not records[0]["device"].startswith("cpu")
