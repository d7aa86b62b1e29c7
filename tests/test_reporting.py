"""Logging users already read: TRL's rewards/* and logps/* in every step record (TRL's definitions), TensorBoard and
W&B (offline) through their own libraries, plain progress lines when stdout is not a terminal, the closing summary
of an offline run, and iterations numbered from 0 everywhere."""

import importlib.util
import json

import pytest
import torch

from inpo.objectives import make_objective, pair_margin
from inpo.train.reporting import parse_report_to, pair_metric_sums, step_line, trl_metrics
from tests.test_online import _pairs_file, model_dir, read_metrics  # noqa: F401  (fixture)

TRL_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"}


def _offline_args(model_dir, data, out, *extra):
    return ["--model", model_dir, "--data", str(data), "--output", str(out), "--objective", "dpo", "--beta", "0.5",
            "--epochs", "2", "--batch-pairs", "6", "--lr", "3e-3", "--impl", "torch", "--progress", "false",
            "--threads", "1", *extra]


def test_report_to_parsing_and_missing_package_errors(monkeypatch):
    assert parse_report_to("none") == [] and parse_report_to(None) == [] and parse_report_to("") == []
    assert parse_report_to("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert parse_report_to(["wandb"]) == ["wandb"] and parse_report_to("['tensorboard']") == ["tensorboard"]
    with pytest.raises(ValueError, match=r"report_to='mlflow'.*unknown integration.*\['mlflow'\]"):
        parse_report_to("mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ValueError, match=r"report_to='wandb' needs the 'wandb' package.*pip install 'inpo\[wandb\]'"):
        parse_report_to("wandb")
    assert "wandb" not in parse_report_to("all")  # all = every installed integration, as in transformers


def test_report_to_missing_package_is_a_cli_error_before_the_run(monkeypatch, tmp_path, capsys):
    from inpo.online.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    assert main(["--output", str(tmp_path / "run"), "--report-to", "tensorboard"]) == 2
    assert "inpo[tensorboard]" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_implicit_rewards_follow_trl_and_the_objectives_margins():
    g = torch.Generator().manual_seed(0)
    logps, ref, anchor = (torch.randn(8, generator=g) * 5 - 20 for _ in range(3))
    dpo = make_objective("dpo", beta=0.3)
    torch.testing.assert_close(dpo.implicit_rewards(logps, ref), 0.3 * (logps - ref))  # TRL's β·(log π − log π_ref)
    for obj in (dpo, make_objective("ipo", beta=0.2), make_objective("inpo", eta=0.1, ratio=0.25),
                make_objective("inpo", eta=0.1, ratio=0.0), make_objective("inpo", eta=0.1, ratio=1.0),
                make_objective("onpo", eta=2.0)):
        r = obj.implicit_rewards(logps, ref, anchor)
        # the chosen-minus-rejected reward is the objective's own margin, scaled
        torch.testing.assert_close(pair_margin(r), obj.reward_scale * obj.margin(logps, ref, anchor))
    # INPO with τ/η = 1 is IPO with β = η: same rewards
    torch.testing.assert_close(make_objective("inpo", eta=0.2, ratio=1.0).implicit_rewards(logps, ref, anchor),
                               make_objective("ipo", beta=0.2).implicit_rewards(logps, ref, anchor))


def test_pair_metric_sums_by_hand():
    obj = make_objective("dpo", beta=0.5)
    logps = torch.tensor([-10.0, -12.0, -8.0, -7.0])  # pairs (chosen, rejected): (0, 1), (2, 3)
    ref = torch.tensor([-11.0, -11.0, -9.0, -9.0])
    m = trl_metrics(pair_metric_sums(obj, logps, {"ref_logps": ref}).tolist(), 2)
    # rewards: chosen 0.5·1 = 0.5 and 0.5·1 = 0.5; rejected 0.5·(−1) = −0.5 and 0.5·2 = 1.0
    assert m == pytest.approx({"rewards/chosen": 0.5, "rewards/rejected": 0.25, "rewards/accuracies": 0.5,
                               "rewards/margins": 0.25, "logps/chosen": -9.0, "logps/rejected": -9.5})


def test_offline_run_logs_trl_metrics_progress_lines_summary_and_tensorboard(model_dir, tmp_path, capsys):
    """At step 1 the policy is π_ref: rewards are exactly 0 and logps/* are the reference's means (one step holds
    all six pairs). TensorBoard holds the same numbers under HF Trainer's train/ names."""
    from safetensors.torch import load_file

    from inpo.online.cli import main

    pytest.importorskip("tensorboard")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=6)
    out = tmp_path / "run"
    assert main(_offline_args(model_dir, data, out, "--logging-steps", "1", "--report-to", "tensorboard")) == 0
    text = capsys.readouterr().out
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 2 and all(TRL_KEYS <= r.keys() for r in steps)
    ref = load_file(str(out / "iter_000" / "logps.safetensors"))["ref"]
    first = steps[0]
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-4) and first["rewards/margins"] == pytest.approx(0, abs=1e-4)
    assert first["logps/chosen"] == pytest.approx(ref[0::2].mean().item(), rel=1e-5)
    assert first["logps/rejected"] == pytest.approx(ref[1::2].mean().item(), rel=1e-5)
    last = steps[-1]
    assert last["rewards/margins"] == pytest.approx(last["rewards/chosen"] - last["rewards/rejected"])
    assert last["rewards/margins"] == pytest.approx(0.5 * last["margin"], rel=1e-5)  # β·margin, β = 0.5
    assert 0 <= last["rewards/accuracies"] <= 1
    # plain progress lines (stdout captured: not a terminal), numbered like iter_000/, then the summary
    assert "[inpo] iteration 0 train step 1/2 (global 1)" in text and "step 2/2 (global 2)" in text
    assert f"final loss {step_line(last, 2).split('loss ')[1].split()[0]}" in text
    assert "rewards/accuracies" in text.split("[inpo] summary:")[1]
    # TensorBoard: the same values, read back with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/rewards/accuracies", "train/logps/chosen"} <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)


def test_wandb_offline_run_records_the_metrics(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from inpo.online.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = _pairs_file(tmp_path / "pairs.jsonl", n=6)
    out = tmp_path / "run"
    assert main(_offline_args(model_dir, data, out, "--report-to", "wandb")) == 0
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(out.rglob("*"))
    # wandb's own binary log (its reader is not public; the values are JSON text). Its writer, the wandb-core
    # service, may still be flushing after run.finish() returns (seen once in 4 runs): allow it a few seconds.
    import time

    deadline = time.monotonic() + 30
    while b"train/rewards/accuracies" not in (blob := files[0].read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"train/rewards/accuracies" in blob and b"train/logps/chosen" in blob
    for r in (r for r in read_metrics(out) if r["kind"] == "step"):
        assert json.dumps(r["loss"]).encode() in blob


def test_closing_table_numbers_iterations_like_the_folders():
    from rich.console import Console

    from inpo.online.cli import _table

    console = Console(record=True, width=120)
    _table([{"iteration": 0, "win_rate": 0.6, "win_rate_ci_low": 0.5, "win_rate_ci_high": 0.7, "pairs": 3,
             "oracle_queries": 9, "wall_s": 1.0}], console)
    row = [line for line in console.export_text().splitlines() if "0.600" in line][0]
    assert row.split("│")[1].strip() == "0"


def test_offline_heldout_pairs_give_trl_eval_metrics_in_the_summary(model_dir, tmp_path, capsys):
    """eval_data (TRL's eval_dataset): after training, eval_loss and eval_rewards/* of the trained policy on the
    held-out pairs, in the iteration record and the closing summary. The chosen answers are what training pushes
    up, so the held-out reward accuracy is high; eval_loss is the objective's loss recomputed from the files."""
    from inpo.objectives import make_objective
    from inpo.online.cli import main

    data = _pairs_file(tmp_path / "pairs.jsonl", n=12)
    lines = data.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (tmp_path / "held.jsonl").write_text("\n".join(lines[8:]) + "\n")
    out = tmp_path / "run"
    args = _offline_args(model_dir, tmp_path / "train.jsonl", out, "--eval-data", str(tmp_path / "held.jsonl"),
                         "--epochs", "3", "--batch-pairs", "4")
    assert main(args) == 0
    text = capsys.readouterr().out
    (it,) = [r for r in read_metrics(out) if r["kind"] == "iteration"]
    assert it["eval_pairs"] == 4 and {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"} <= it.keys()
    assert it["eval_rewards/accuracies"] == 1.0 and it["eval_rewards/margins"] > 0
    # DPO's loss from the logged margin: -log sigmoid(margin) is convex, so mean loss >= loss at the mean margin
    dpo = make_objective("dpo", beta=0.5)
    at_mean = float(dpo.losses(torch.tensor([it["eval_rewards/margins"] / 0.5, 0.0]), torch.zeros(2)))
    assert it["eval_loss"] >= at_mean - 1e-6
    assert "[inpo] held-out:" in text and "loss" in text.split("[inpo] held-out:")[1]
    assert main(["--output", str(tmp_path / "x"), "--eval-data", str(tmp_path / "held.jsonl")]) == 2
