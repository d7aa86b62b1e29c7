"""TRL 1.16 semantics where inpo claims them, pinned against TRL itself (the dev extra installs trl==1.16.0):

* ``--model`` defaults: every optimiser / schedule key equals TRL's own ``DPOConfig`` default, read at test time;
* ``loss_type: ipo`` is TRL's IPO (each summed log-ratio divided by its completion length), ``loss_type: sigmoid``
  TRL's DPO, and ``objective: ipo`` the summed-log-prob IPO, which equals TRL's with that division removed: TRL's
  ``DPOTrainer`` and ``inpo train --data`` on the same tiny local Qwen2 (ChatML template, conversational pairs of
  different lengths), with the same defaults, agree step for step in loss, rewards/*, logps/*, grad_norm and lr.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import textwrap

import pytest
import torch

from tests.hf_fixtures import qwen2_dir, write_jsonl  # noqa: F401  (fixture)

trl = pytest.importorskip("trl", reason="the dev extra installs trl==1.16.0, the parity reference")

WORDS = ["calm", "blue", "deep", "wide", "cold", "bright", "quiet", "old"]


def _trl_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(trl.DPOConfig) if f.default is not dataclasses.MISSING}


def test_trl_version_is_the_pinned_reference():
    assert trl.__version__ == "1.16.0"


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_model_defaults_are_trls_dpoconfig_defaults(loss_type):
    """With --model (a user's LM) every optimiser / schedule key is TRL's DPOConfig default; the mapping from TRL's
    names to ours is the one inpo.train.trl_names applies."""
    from inpo.train.config import load_config
    from inpo.train.optim import warmup_steps_of

    d = _trl_defaults()
    cfg = load_config(None, {"model": "some/dir", "loss_type": loss_type})
    obj = cfg.make_objective()
    trl_warmup = int(d["warmup_steps"]) if d["warmup_steps"] >= 1 else math.ceil(100 * d["warmup_steps"])
    pairs = {
        "learning_rate": (cfg.lr, d["learning_rate"]),
        "adam_beta1/adam_beta2": (cfg.betas, [d["adam_beta1"], d["adam_beta2"]]),
        "adam_epsilon": (cfg.adam_epsilon, d["adam_epsilon"]),
        "weight_decay": (cfg.weight_decay, d["weight_decay"]),
        "warmup_steps (of 100 steps)": (warmup_steps_of(100, warmup_ratio=cfg.warmup_ratio,
                                                        warmup_steps=cfg.warmup_steps), trl_warmup),
        "lr_scheduler_type": (cfg.lr_scheduler_type, str(d["lr_scheduler_type"])),
        "lr_scheduler_kwargs (no floor)": (cfg.min_lr_ratio, 0.0 if not d["lr_scheduler_kwargs"] else None),
        "num_train_epochs": (cfg.epochs, d["num_train_epochs"]),
        "per_device_train_batch_size x gradient_accumulation_steps": (
            cfg.batch_pairs, d["per_device_train_batch_size"] * d["gradient_accumulation_steps"]),
        "max_grad_norm": (cfg.max_grad_norm, d["max_grad_norm"]),
        "max_steps": (cfg.max_steps, None if d["max_steps"] == -1 else d["max_steps"]),
        "max_length": (cfg.max_length, d["max_length"]),
        "truncation_mode": (cfg.truncation_mode, d["truncation_mode"]),
        "logging_steps": (cfg.logging_steps, d["logging_steps"]),
        "beta": (obj.beta, d["beta"]),
        "label_smoothing": (getattr(obj, "label_smoothing", 0.0), d["label_smoothing"]),
    }
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert not differ, f"inpo's --model defaults differ from TRL's DPOConfig (ours, TRL's): {differ}"
    assert obj.length_normalize == (loss_type == "ipo")
    load_config(None, {"model": "d", "optim": d["optim"]})  # TRL's optimiser is ours (torch AdamW): accepted
    with pytest.raises(ValueError, match="optim 'sgd' is not available"):
        load_config(None, {"model": "d", "optim": "sgd"})


def _pairs(tmp_path):
    """Conversational pairs (TRL's explicit-prompt format) whose chosen and rejected lengths differ."""
    rows = [{"prompt": [{"role": "user", "content": f"Describe the {w} sea in a few words."}],
             "chosen": [{"role": "assistant", "content": f"The sea is {w} and " + "very " * (i % 3) + "soft."}],
             "rejected": [{"role": "assistant", "content": "No." + " Really no." * (i % 4)}]}
            for i, w in enumerate(WORDS)]
    return rows, write_jsonl(tmp_path / "pairs.jsonl", rows)


def _summed_ipo_compute_loss():
    """TRL's DPOTrainer._compute_loss with the IPO branch's division by the completion length removed."""
    src = textwrap.dedent(inspect.getsource(trl.DPOTrainer._compute_loss))
    start, end = src.index('elif loss_type == "ipo":'), src.index('elif loss_type == "exo_pair":')
    block = src[start:end]
    summed = block.replace("chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)", "chosen_scores") \
                  .replace("rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)", "rejected_scores")
    assert summed.count("clamp(min=1.0)") == 0 and summed != block, "TRL's IPO branch changed; update this patch"
    namespace = dict(sys.modules[trl.DPOTrainer.__module__].__dict__)
    exec(compile(src[:start] + summed + src[end:], "<trl _compute_loss, summed ipo>", "exec"), namespace)
    return namespace["_compute_loss"]


def _trl_steps(model_dir, rows, loss_type, lr, out) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = trl.DPOConfig(output_dir=str(out), loss_type=[loss_type], learning_rate=lr, use_cpu=True, bf16=False,
                         logging_steps=1, report_to="none", save_strategy="no")  # else TRL's defaults, as ours
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def _our_steps(model_dir, data, trl_key, lr, out) -> list[dict]:
    from inpo.train.cli import main

    key, value = trl_key
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), f"--{key}", value,
                 "--learning_rate", str(lr), "--threads", "1", "--progress", "false"]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [dict(r, learning_rate=r["lr"]) for r in recs if r["kind"] == "step"]


# (TRL loss_type, our key and value, TRL patched to the summed IPO)
CASES = {"ipo": ("ipo", ("loss_type", "ipo"), False), "sigmoid": ("sigmoid", ("loss_type", "sigmoid"), False),
         "summed-ipo": ("ipo", ("objective", "ipo"), True)}


@pytest.mark.parametrize("case", list(CASES))
def test_offline_training_equals_trl_dpotrainer_step_for_step(case, qwen2_dir, tmp_path, monkeypatch):
    """3 steps (TRL's 3 epochs of its batch of 8 pairs: one step each, so data order cannot differ), lr 1e-3 so
    that the optimiser and the linear schedule move the model. Tolerances: fp32 rounding of ~100-nat sums
    (measured <= 1e-7 relative in loss / grad norm / logps, <= 3e-7 absolute in rewards at β = 0.1)."""
    loss_type, ours_key, summed = CASES[case]
    if summed:
        monkeypatch.setattr(trl.DPOTrainer, "_compute_loss", _summed_ipo_compute_loss())
    torch.set_num_threads(1)
    rows, data = _pairs(tmp_path)
    theirs = _trl_steps(qwen2_dir, rows, loss_type, 1e-3, tmp_path / "trl")
    ours = _our_steps(qwen2_dir, data, ours_key, 1e-3, tmp_path / "ours")
    assert len(theirs) == len(ours) == 3
    scale = max(abs(r["logps/rejected"]) for r in theirs)
    for step, (a, b) in enumerate(zip(theirs, ours), 1):
        for k in ("loss", "grad_norm", "logps/chosen", "logps/rejected", "learning_rate"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), (case, step, k, a[k], b[k])
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):  # β·(differences of ~100-nat sums)
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=4e-7 * 0.1 * scale), (case, step, k, a[k], b[k])
        assert b["rewards/accuracies"] == a["rewards/accuracies"], (case, step)
    assert ours[-1]["loss"] != pytest.approx(ours[0]["loss"], rel=1e-3)  # the steps moved the model


@pytest.mark.parametrize("kind, hf_name, floor", [("linear", "linear", 0.0), ("cosine", "cosine", 0.0),
                                                  ("cosine", "cosine_with_min_lr", 0.1), ("constant", "constant", 0.0),
                                                  ("constant_with_warmup", "constant_with_warmup", 0.0)])
def test_schedules_are_transformers_formula_for_formula(kind, hf_name, floor):
    """lr_scheduler_type names transformers' schedules: the same lr at every step, warm-up included (from 0)."""
    from transformers.optimization import get_scheduler

    from inpo.train.optim import lr_schedule

    for total, warmup in ((10, 0), (10, 3), (7, 2), (1, 0)):
        opts = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5) for _ in range(2)]
        ours = lr_schedule(opts[0], kind=kind, total_steps=total, warmup=warmup, min_lr_ratio=floor)
        theirs = get_scheduler(hf_name, opts[1], num_warmup_steps=warmup, num_training_steps=total,
                               scheduler_specific_kwargs={"min_lr_rate": floor} if floor else None)
        for step in range(total + 1):
            assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=1e-15), (total, warmup, step)
            for o in opts:
                o.step()
            ours.step()
            theirs.step()


def test_fractional_epochs_stop_part_way_like_trl(qwen2_dir, tmp_path):
    """num_train_epochs 0.5 of 8 pairs in batches of 3 (3 steps per epoch, the last one short): ceil(0.5 · 3) = 2
    optimiser steps, and the linear schedule decays over those 2 (HF Trainer's max_steps = ceil(num_train_epochs ·
    steps per epoch))."""
    rows, data = _pairs(tmp_path)
    from inpo.train.cli import main

    out = tmp_path / "half"
    assert main(["--model", str(qwen2_dir), "--data", str(data), "--output", str(out), "--num_train_epochs", "0.5",
                 "--per_device_train_batch_size", "3", "--loss_type", "sigmoid", "--threads", "1", "--progress",
                 "false"]) == 0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    assert [r["lr"] for r in steps] == pytest.approx([1e-6, 0.5e-6])
