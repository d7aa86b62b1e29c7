"""Checkpoints and online iterates are transformers model folders: config.json and the tokenizer beside the weights
(under transformers' own key names), so from_pretrained loads them; iterates are kept as iter_<t>/policy (the
newest keep_iterates of them, never removing a folder that is not ours) and `inpo eval` compares two of them."""

import json

import pytest
import torch
from safetensors.torch import load_file

from inpo.online.cli import main as train_main
from tests.test_online import _pairs_file, micro_args, model_dir, read_metrics  # noqa: F401  (fixture)


def _assert_same_weights(model, tensors: dict):
    sd = model.state_dict()
    for k, v in tensors.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0, msg=k)


def test_every_checkpoint_loads_with_from_pretrained_and_still_resumes(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _pairs_file(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "run"
    args = ["--model", model_dir, "--data", str(data), "--output", str(out), "--objective", "dpo", "--epochs", "2",
            "--batch-pairs", "4", "--lr", "3e-3", "--impl", "torch", "--progress", "false", "--threads", "1",
            "--checkpoint-every", "1", "--keep-checkpoints", "10"]
    assert train_main([*args, "--max-steps", "2"]) == 0
    ckpts = sorted((out / "checkpoints").glob("ckpt-*"))
    assert len(ckpts) == 2
    for ck in ckpts:
        model = AutoModelForCausalLM.from_pretrained(str(ck))
        tok = AutoTokenizer.from_pretrained(str(ck))
        assert tok.chat_template and len(tok) == model.config.vocab_size
        _assert_same_weights(model, load_file(str(ck / "model.safetensors")))
    # the two checkpoints differ (a step was taken) and resume reads the renamed keys back
    a, b = (load_file(str(c / "model.safetensors")) for c in ckpts)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert train_main([*args, "--resume"]) == 0
    steps = [r["step"] for r in read_metrics(out) if r["kind"] == "step"]
    assert steps == list(range(1, 5))


def test_online_iterates_are_model_folders_and_eval_compares_them(model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from inpo.eval import main as eval_main

    out = tmp_path / "run"
    assert train_main(micro_args(model_dir, out, "--iterations", "2", "--evaluate", "false")) == 0
    p0, p1 = out / "iter_000" / "policy", out / "iter_001" / "policy"
    for t, p in enumerate((p0, p1)):
        meta = json.loads((p / "inpo_export.json").read_text())
        assert meta["kind"] == "iterate" and meta["iteration"] == t and meta["iterate"] == t + 1
        assert (p / "config.json").is_file() and (p / "tokenizer.json").is_file()
    # iter_001/policy is the last iterate: the exported final policy; iter_000's is π_1, a different model
    final = load_file(str(out / "final" / "model.safetensors"))
    last, first = load_file(str(p1 / "model.safetensors")), load_file(str(p0 / "model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(first[k], last[k]) for k in first)
    # π_1 is what the iteration-0 checkpoint holds
    (done0,) = (out / "checkpoints").glob("ckpt-*-i0-done")
    _assert_same_weights(AutoModelForCausalLM.from_pretrained(str(p0)), load_file(str(done0 / "model.safetensors")))
    capsys.readouterr()
    rc = eval_main(["--policy", str(p1), "--baseline", str(p0), "--n", "3", "--k", "1", "--max-new-tokens", "4",
                    "--n-bootstrap", "20", "--json", str(tmp_path / "eval.json")])
    assert rc == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= res["win_rate"] <= 1


def test_keep_iterates_removes_only_our_older_iterate_folders(tmp_path):
    from inpo.online import prune_iterates

    def iterate(t, kind="iterate"):
        d = tmp_path / f"iter_{t:03d}" / "policy"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
        (d / "inpo_export.json").write_text(json.dumps({"kind": kind, "iteration": t}))
        return d

    ours = [iterate(t) for t in range(4)]
    foreign = tmp_path / "iter_009" / "policy"  # a user's folder without our marker
    foreign.mkdir(parents=True)
    (foreign / "weights.bin").write_bytes(b"keep me")
    other_kind = iterate(7, kind="something-else")
    (tmp_path / "iter_000" / "samples.jsonl").write_text("{}\n")  # the iteration's own files stay
    removed = prune_iterates(tmp_path, 2)
    assert sorted(removed) == ours[:2]
    assert not ours[0].exists() and not ours[1].exists() and ours[2].is_dir() and ours[3].is_dir()
    assert (foreign / "weights.bin").read_bytes() == b"keep me" and other_kind.is_dir()
    assert (tmp_path / "iter_000" / "samples.jsonl").is_file()


def test_keep_iterates_in_a_run_and_its_validation(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(micro_args(model_dir, out, "--iterations", "2", "--evaluate", "false",
                                 "--keep-iterates", "1")) == 0
    assert not (out / "iter_000" / "policy").exists() and (out / "iter_001" / "policy" / "config.json").is_file()
    assert (out / "iter_000" / "data.jsonl").is_file()
    assert train_main(micro_args(model_dir, tmp_path / "bad", "--keep-iterates", "0")) == 2
    assert "keep_iterates must be > 0 or null, got 0" in capsys.readouterr().err
