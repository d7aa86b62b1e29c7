"""Checkpoints: atomic, corrupt files detected, and --resume continues bit-exactly on CPU."""

import json

import pytest
import torch

from inpo.online.cli import main as train_main
from inpo.train.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, restore_training_state,
                                   save_checkpoint)
from inpo.utils.io import atomic_write_text
from tests.test_online import _pairs_file, micro_args, model_dir, read_metrics  # noqa: F401  (fixture)


def _steps(out):
    return [(r["step"], r["iteration"], r["loss"], r["grad_norm"]) for r in read_metrics(out) if r["kind"] == "step"]


def test_save_load_roundtrip_and_corruption(tmp_path):
    from tests.test_train_step import tiny_model

    model = tiny_model(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.tensor([[1, 2, 3]]), use_cache=False).logits.sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched,
                           state={"iteration": 2, "phase": "train", "iter_step": 5, "global_step": 9})
    assert latest_checkpoint(tmp_path) == path and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    fresh = tiny_model(True, seed=1)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    state = restore_training_state(load_checkpoint(path), model=fresh, optimizer=opt2, scheduler=sched2)
    assert state["iter_step"] == 5 and sched2.last_epoch == sched.last_epoch
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied after loading
    # a truncated weights file is reported with its path
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt or truncated"):
        load_checkpoint(path)
    atomic_write_text(tmp_path / "checkpoints" / "latest", "ckpt-missing\n")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        latest_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope")


def test_offline_resume_is_bit_exact(model_dir, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl", n=10)
    common = ["--model", model_dir, "--data", str(data), "--objective", "inpo", "--epochs", "2", "--batch-pairs",
              "3", "--lr", "3e-3", "--impl", "torch", "--progress", "false", "--threads", "1"]
    assert train_main(common + ["--output", str(tmp_path / "full")]) == 0
    full = _steps(tmp_path / "full")
    assert len(full) == 8
    assert train_main(common + ["--output", str(tmp_path / "cut"), "--max-steps", "3"]) == 0
    assert len(_steps(tmp_path / "cut")) == 3 and not (tmp_path / "cut" / "final").exists()
    assert train_main(common + ["--output", str(tmp_path / "cut"), "--resume"]) == 0
    assert _steps(tmp_path / "cut") == full  # every loss and grad norm identical, not just close
    assert train_main(common + ["--output", str(tmp_path / "cut"), "--resume", "--lr", "1e-3"]) == 2  # changed config
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_online_resume_across_iterations_is_bit_exact(model_dir, tmp_path):
    args = micro_args(model_dir, tmp_path / "full", "--iterations", "2", "--checkpoint-every", "1")
    assert train_main(args) == 0
    full = read_metrics(tmp_path / "full")
    steps = _steps(tmp_path / "full")
    n0 = sum(1 for s in steps if s[1] == 0)
    assert n0 >= 2 and len(steps) > n0
    cut = tmp_path / "cut"
    base = micro_args(model_dir, cut, "--iterations", "2", "--checkpoint-every", "1")
    # stop mid-iteration 0, resume; stop mid-iteration 1, resume
    assert train_main(base + ["--max-steps", str(n0 - 1)]) == 0
    assert train_main(base + ["--resume", "--max-steps", str(n0 + 1)]) == 0
    assert train_main(base + ["--resume"]) == 0
    assert _steps(cut) == steps
    wr = lambda recs: [(r["iteration"], r["win_rate"]) for r in recs if r["kind"] == "iteration"]  # noqa: E731
    assert wr(read_metrics(cut)) == wr(full) and len(wr(full)) == 2
    assert json.loads((cut / "checkpoints" / latest_checkpoint(cut).name / "state.json").read_text())["state"][
        "phase"] == "done"
