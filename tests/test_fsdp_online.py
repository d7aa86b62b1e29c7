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

from inpo.ops.attention import register
from tests.test_fsdp import _free_port, _worker
from tests.test_online import model_dir, read_metrics  # noqa: F401  (fixture)

ITER_KEYS = {"iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "oracle_queries"}


def _args(model_dir, out, *extra):
    return ["--model", model_dir, "--output", str(out), "--iterations", "2", "--n-prompts", "8", "--k", "2",
            "--max-new-tokens", "6", "--n-eval", "3", "--eval-k", "1", "--batch-pairs", "2", "--epochs", "1",
            "--lr", "1e-4", "--n-bootstrap", "20", "--impl", "torch", "--progress", "false", "--threads", "1",
            "--checkpoint-every", "1", "--keep-checkpoints", "50", *extra]


def _spawn(model_dir, out, err, *extra):
    mp.spawn(_worker, args=(2, _free_port(), _args(model_dir, out, *extra), str(err)), nprocs=2, join=True)
    errors = [p.read_text() for p in err.parent.glob(err.name + ".*")]
    assert not errors, errors


@pytest.fixture(scope="module")
def full_run(model_dir, tmp_path_factory):
    """One uninterrupted 2-process, 2-iteration online INPO run (shared by the checks below)."""
    tmp = tmp_path_factory.mktemp("fsdp_online")
    _spawn(model_dir, tmp / "a", tmp / "err_a")
    return tmp / "a"


def test_fsdp2_online_iteration_two_processes(model_dir, full_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = full_run
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
    from inpo.online import training_sequences as _sequences
    from inpo.train.checkpoint import load_checkpoint
    from inpo.train.config import load_config, parse_overrides
    from inpo.train.loop import precompute_logps

    cfg = load_config(None, parse_overrides(_args(model_dir, out)))
    (ck,) = [p for p in (out / "checkpoints").iterdir() if p.name.endswith("-i0-done")]
    pi1 = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=register())  # the run's attention
    pi1.load_state_dict({k.removeprefix("model."): v for k, v in load_checkpoint(ck)["model"].items()})
    d1 = out / "iter_001"
    data1 = [json.loads(x) for x in (d1 / "data.jsonl").read_text().splitlines()]
    seqs, _ = _sequences(AutoTokenizer.from_pretrained(model_dir), data1, True, cfg)
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


def _steps(out):
    return [(r["step"], r["iteration"], r["phase"], r["loss"], r["grad_norm"]) for r in read_metrics(out)
            if r["kind"] == "step"]


def test_resume_under_torchrun_is_bit_exact(model_dir, full_run, tmp_path):
    """Stopped mid-iteration 0 and again mid-iteration 1, then resumed with the same 2 processes: the same steps,
    losses, win-rates and final weights as the uninterrupted run, to the bit."""
    from safetensors.torch import load_file

    steps = _steps(full_run)
    n0 = sum(1 for s in steps if s[1] == 0)
    assert n0 >= 2 and len(steps) > n0 + 1
    cut = tmp_path / "cut"
    _spawn(model_dir, cut, tmp_path / "err_1", "--max-steps", str(n0 - 1))
    assert len(_steps(cut)) == n0 - 1 and not (cut / "final").exists()
    _spawn(model_dir, cut, tmp_path / "err_2", "--resume", "true", "--max-steps", str(n0 + 1))
    _spawn(model_dir, cut, tmp_path / "err_3", "--resume", "true")
    assert _steps(cut) == steps
    wr = lambda out: [(r["iteration"], r["win_rate"], r["pairs"]) for r in read_metrics(out)  # noqa: E731
                      if r["kind"] == "iteration"]
    assert wr(cut) == wr(full_run) and len(wr(cut)) == 2
    for t in (0, 1):
        d = f"iter_{t:03d}"
        assert (cut / d / "data.jsonl").read_text() == (full_run / d / "data.jsonl").read_text()
    a = load_file(str(full_run / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_onpo_under_torchrun_trains_both_chains(model_dir, tmp_path):
    """ONPO's two regressions under FSDP2: π' (sharded like the policy) and π both train, π' is checkpointed
    beside the policy, the anchor π'_{t+1} log-probs are π' as checkpointed, and a run stopped inside either
    regression resumes bit-exactly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.online import training_sequences as _sequences
    from inpo.train.checkpoint import latest_checkpoint, load_checkpoint
    from inpo.train.config import load_config, parse_overrides
    from inpo.train.loop import precompute_logps

    out = tmp_path / "onpo"
    extra = ("--objective", "onpo", "--iterations", "1")
    _spawn(model_dir, out, tmp_path / "err", *extra)
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    phases = [r["phase"] for r in steps]
    assert phases == sorted(phases) and set(phases) == {"aux", "train"}  # π' first, then π, same step count
    assert phases.count("aux") == phases.count("train") > 0
    (it,) = [r for r in read_metrics(out) if r["kind"] == "iteration"]
    assert 0 <= it["win_rate"] <= 1 and it["pairs"] > 0
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck["state"]["phase"] == "done" and ck["world_size"] == 2 and set(ck["extra_models"]) == {"aux"}
    aux = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=register())  # the run's attention
    aux.load_state_dict({k.removeprefix("model."): v for k, v in ck["extra_models"]["aux"].items()})
    ref = load_file(str(Path(model_dir) / "model.safetensors"))
    assert any(not torch.equal(ref[k], v) for k, v in aux.state_dict().items() if k in ref)  # π' moved
    cfg = load_config(None, parse_overrides(_args(model_dir, out, *extra)))
    data = [json.loads(x) for x in (out / "iter_000" / "data.jsonl").read_text().splitlines()]
    seqs, _ = _sequences(AutoTokenizer.from_pretrained(model_dir), data, True, cfg)
    anchor = load_file(str(out / "iter_000" / "logps_aux_next.safetensors"))["aux_next"]
    torch.testing.assert_close(anchor, precompute_logps(aux, seqs, max_tokens=cfg.max_tokens, impl="torch"))

    # stopped inside π''s regression and again inside π's, then resumed: the same run, to the bit
    n_aux = phases.count("aux")
    assert n_aux >= 2  # so that step 1 stops inside π''s regression
    cut = tmp_path / "cut"
    _spawn(model_dir, cut, tmp_path / "err_1", *extra, "--max-steps", "1")
    _spawn(model_dir, cut, tmp_path / "err_2", *extra, "--resume", "true", "--max-steps", str(n_aux + 1))
    assert [r["phase"] for r in read_metrics(cut) if r["kind"] == "step"] == ["aux"] * n_aux + ["train"]
    _spawn(model_dir, cut, tmp_path / "err_3", *extra, "--resume", "true")
    assert _steps(cut) == _steps(out)
    a = load_file(str(out / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_world_size_is_refused(model_dir, tmp_path):
    """A checkpoint records the world size that wrote it; resuming with another one fails before any work."""
    from inpo.train.checkpoint import latest_checkpoint
    from inpo.train.cli import main as train_main
    from tests.test_online import micro_args

    out = tmp_path / "run"
    assert train_main(micro_args(model_dir, out)) == 0
    state_file = latest_checkpoint(out) / "state.json"
    meta = json.loads(state_file.read_text())
    assert meta["world_size"] == 1
    meta["world_size"] = 2  # as if a 2-process torchrun run had written it
    from inpo.train.checkpoint import _meta_digest

    meta["meta_sha256"] = _meta_digest(meta)  # state.json carries its own checksum: re-seal the edited copy
    state_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"2 process\(es\), this run has 1.*same number of processes"):
        from inpo.online import run_online
        from inpo.train.config import load_config, parse_overrides

        run_online(load_config(None, parse_overrides(micro_args(model_dir, out, "--resume", "true"))))


def test_fsdp_checkpoints_and_iterates_are_model_folders(full_run):
    """Under FSDP2 the policy is wrapped (keys 'model.<name>'): checkpoints still store transformers' key names
    beside config.json and the tokenizer, so from_pretrained loads them; the iterate folders too."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpts = sorted((full_run / "checkpoints").glob("ckpt-*"))
    assert ckpts
    for ck in (ckpts[0], ckpts[-1]):
        state = json.loads((ck / "state.json").read_text())
        assert state["key_prefix"]["model"] == "model."  # the FSDP root wrapper's prefix, stripped on disk
        model = AutoModelForCausalLM.from_pretrained(str(ck))
        AutoTokenizer.from_pretrained(str(ck))
        sd, saved = model.state_dict(), load_file(str(ck / "model.safetensors"))
        assert saved and all(torch.equal(sd[k], v) for k, v in saved.items())
    last = load_file(str(full_run / "iter_001" / "policy" / "model.safetensors"))
    final = load_file(str(full_run / "final" / "model.safetensors"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in last)
    AutoModelForCausalLM.from_pretrained(str(full_run / "iter_000" / "policy"))
