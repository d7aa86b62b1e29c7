"""Online INPO under FSDP2 on CPU: two gloo processes (torch.multiprocessing, like tests/test_fsdp.py) run one
micro online iteration -- each rank samples and ranks its block of the prompts with a full copy of π_t, the
pairs are gathered in prompt order, training is sharded, rank 0 evaluates and writes.

The samples differ from a single-process run (per-rank RNG streams), so the check is: it completes, the files
and metrics are right, every selected pair is trained on, and two identical runs give identical weights.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_fsdp import _free_port, _worker
from tests.test_online import model_dir, read_metrics  # noqa: F401  (fixture)

ITER_KEYS = {"iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "oracle_queries"}


def _args(model_dir, out):
    return ["--model", model_dir, "--output", str(out), "--iterations", "2", "--n-prompts", "8", "--k", "2",
            "--max-new-tokens", "6", "--n-eval", "3", "--eval-k", "1", "--batch-pairs", "2", "--epochs", "1",
            "--lr", "1e-4", "--n-bootstrap", "20", "--impl", "torch", "--progress", "false", "--threads", "1"]


def _spawn(model_dir, out, err):
    mp.spawn(_worker, args=(2, _free_port(), _args(model_dir, out), str(err)), nprocs=2, join=True)
    errors = [p.read_text() for p in err.parent.glob(err.name + ".*")]
    assert not errors, errors


def test_fsdp2_online_iteration_two_processes(model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "a"
    _spawn(model_dir, out, tmp_path / "err_a")
    recs = read_metrics(out)
    iters = [r for r in recs if r["kind"] == "iteration"]
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["iteration"] for r in iters] == [0, 1] and all(ITER_KEYS <= set(r) for r in iters), iters
    it = iters[0]
    assert 0 <= it["win_rate_ci_low"] <= it["win_rate"] <= it["win_rate_ci_high"] <= 1
    assert it["oracle_queries"] > 0
    d = out / "iter_000"
    stats = json.loads((d / "rank_stats.json").read_text())
    pairs = [json.loads(x) for x in (d / "data.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(len(s["responses"]) == 2 for s in samples)
    # every pair a rank selected is in the gathered data, in prompt order, and is what was trained on
    assert stats["world_size"] == 2 and len(stats["rank_units"]) == 2
    assert sum(stats["rank_units"]) == stats["pairs"] == it["pairs"] == len(pairs) > 0
    order = [s["prompt"] for s in samples]
    assert [order.index(p["prompt"]) for p in pairs] == sorted(order.index(p["prompt"]) for p in pairs)
    full, tail = divmod(len(pairs), 2)  # batch_pairs=2 over 2 ranks: a 1-pair tail cannot be split, dropped
    assert [r["step"] for r in steps if r["iteration"] == 0] == list(range(1, full + (1 if tail >= 2 else 0) + 1))
    # iteration 1's π_1 log-probs (from the gathered full weights) match π_1 as checkpointed from the shards
    from inpo.online import _sequences
    from inpo.train.checkpoint import load_checkpoint
    from inpo.train.config import load_config, parse_overrides
    from inpo.train.loop import precompute_logps

    cfg = load_config(None, parse_overrides(_args(model_dir, out)))
    (ck,) = [p for p in (out / "checkpoints").iterdir() if p.name.endswith("-i0-done")]
    pi1 = AutoModelForCausalLM.from_pretrained(model_dir)
    pi1.load_state_dict({k.removeprefix("model."): v for k, v in load_checkpoint(ck)["model"].items()})
    d1 = out / "iter_001"
    data1 = [json.loads(x) for x in (d1 / "data.jsonl").read_text().splitlines()]
    seqs = _sequences(AutoTokenizer.from_pretrained(model_dir), data1, True, cfg)
    logps = load_file(str(d1 / "logps.safetensors"))
    torch.testing.assert_close(logps["iterate"], precompute_logps(pi1, seqs, max_tokens=cfg.max_tokens, impl="torch"))
    assert not torch.allclose(logps["iterate"], logps["ref"])
    assert (out / "eval_ref_responses.jsonl").is_file() and (d / "eval_responses.jsonl").is_file()
    assert (out / "checkpoints" / "latest").is_file()

    model = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    assert model.config.vocab_size == len(tok)
    # training moved the weights away from π_ref
    ref = load_file(str(Path(model_dir) / "model.safetensors"))
    final = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(ref[k], final[k]) for k in final if k in ref)

    # deterministic for a seed and a world size: a second identical run gives the same data and weights
    out_b = tmp_path / "b"
    _spawn(model_dir, out_b, tmp_path / "err_b")
    assert (out_b / "iter_000" / "data.jsonl").read_text() == (d / "data.jsonl").read_text()
    again = load_file(str(out_b / "final" / "model.safetensors"))
    assert final.keys() == again.keys()
    for k in final:
        assert torch.equal(final[k], again[k]), k
    it_b = [r for r in read_metrics(out_b) if r["kind"] == "iteration"][0]
    assert it_b["win_rate"] == it["win_rate"]


def test_resume_and_onpo_under_torchrun_say_not_supported(model_dir, tmp_path, monkeypatch):
    """The unsupported torchrun cases fail clearly (checked in-process with a faked world size)."""
    import inpo.online as online
    from inpo.train.config import load_config, parse_overrides

    monkeypatch.setattr(online, "world_is_distributed", lambda: True)
    for extra, msg in ((["--resume", "true"], "--resume"), (["--objective", "onpo"], "ONPO")):
        cfg = load_config(None, parse_overrides(_args(model_dir, tmp_path / "x") + extra))
        with pytest.raises(NotImplementedError, match=msg):
            online.run_online(cfg)
