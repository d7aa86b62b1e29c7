"""A new objective is objectives.py's Objective + register_objective, nothing else: this file defines a toy
length-normalised, reference-free loss (SimPO's shape) and trains it through the trainer, offline and online,
touching no other file; the same loss with kernel_spec() None runs on every head impl (Triton included) as the
Python loss on the head's log-probs, and the fused epilogue's length normalisation matches it."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from inpo.objectives import OBJECTIVES, KernelSpec, Objective, pair_margin, per_token, register_objective
from inpo.train.cli import main as train_main
from tests.helpers import make_problem
from tests.test_online import _pairs_file, micro_args, model_dir, read_metrics  # noqa: F401  (fixture)


@dataclasses.dataclass(frozen=True)
class ToySimPO(Objective):
    """−logσ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ): no reference model, so no log-prob source at all."""

    beta: float = 2.0
    gamma: float = 0.5
    name: ClassVar[str] = "toy_simpo"
    task_defaults: ClassVar[dict] = {"beta": 4.0}
    default_lr: ClassVar[float] = 1e-6

    @property
    def needs_lengths(self) -> bool:
        return True

    @property
    def reward_scale(self) -> float:
        return self.beta

    def log_ratio(self, logps, ref_logps=None, anchor_logps=None):
        return logps

    def margin(self, logps, ref_logps=None, anchor_logps=None, lengths=None):
        return pair_margin(per_token(logps, lengths))

    def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None, lengths=None):
        return -F.logsigmoid(self.beta * self.margin(logps, lengths=lengths) - self.gamma)

    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(pairwise=True, loss="logsigmoid", scale=self.beta, offset=self.gamma / self.beta,
                          length_normalize=True)


@dataclasses.dataclass(frozen=True)
class ToySimPONoKernel(ToySimPO):
    name: ClassVar[str] = "toy_simpo_unfused"

    def kernel_spec(self):
        return None


@pytest.fixture
def toys():
    for cls in (ToySimPO, ToySimPONoKernel):
        register_objective(cls)
    yield
    for cls in (ToySimPO, ToySimPONoKernel):
        OBJECTIVES.pop(cls.name, None)


def test_toy_objective_trains_offline_through_the_trainer(toys, model_dir, tmp_path, capsys):
    """Its parameters are config keys (flat, objective_args, defaults printed), its loss drives the steps."""
    data = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "off"
    args = ["--model", model_dir, "--output", str(out), "--data", str(data), "--objective", "toy_simpo",
            "--gamma", "0.3", "--epochs", "4", "--batch-pairs", "4", "--lr", "3e-3", "--impl", "torch",
            "--progress", "false", "--threads", "1"]
    assert train_main(args) == 0
    text = capsys.readouterr().out
    assert "objective: toy_simpo\nobjective_args:\n  gamma: 0.3\n" in text  # the printed config
    assert "beta=2" in text.split("defaults for a user model")[1]  # its default for a user's model
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 12 and steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["margin"] > steps[0]["margin"]
    # a key the toy does not take is refused, naming it, the objective and what it takes
    assert train_main(args[:-2] + ["--eta", "0.1", "--overwrite"]) == 2
    assert "eta is not used by objective 'toy_simpo', which takes beta, gamma" in capsys.readouterr().err


def test_toy_objective_trains_online_without_log_prob_sources(toys, model_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main(micro_args(model_dir, out, "--objective", "toy_simpo_unfused", "--evaluate", "false")) == 0
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_spec_none_falls_back_and_length_normalisation_is_fused(toys, dtype):
    """impl="triton" (interpreter): the spec'd toy runs in the fused epilogue, the spec-less one as the Triton head's
    log-probs + its Python loss; both equal the naive head + Python loss (within the head's own rounding)."""
    from inpo.ops import preference_loss

    prob = make_problem(lengths=[1, 9, 4, 1, 7, 6, 3, 5], h=24, v=300, seed=5, bias=True, all_ignored=(3,),
                        dtype=dtype)

    def run(objective, impl, problem):
        leaves = {k: problem[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
        loss = preference_loss(leaves["hidden"], leaves["weight"], problem["labels"], problem["cu_seqlens"], objective,
                               bias=leaves["bias"], impl=impl)
        loss.backward()
        return [loss.detach().double()] + [leaves[k].grad.double() for k in ("hidden", "weight", "bias")]

    want = run(ToySimPO(), "naive", {k: v.double() if v is not None and v.is_floating_point() else v
                                     for k, v in prob.items()})
    # fp16: the head's gradient GEMMs round to fp16 (unit roundoff 4.9e-4); measured <= 3.8e-4 of each max here
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for objective in (ToySimPO(), ToySimPONoKernel()):
        for got, ref in zip(run(objective, "triton", prob), want):
            torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_register_objective_checks_the_declarations():
    with pytest.raises(ValueError, match="already registered"):
        register_objective(dataclasses.make_dataclass("Other", [], bases=(ToySimPO,), frozen=True,
                                                      namespace={"name": "inpo"}))
    with pytest.raises(ValueError, match="samples must be one of"):
        register_objective(dataclasses.make_dataclass("Bad", [], bases=(ToySimPO,), frozen=True,
                                                      namespace={"name": "bad_toy", "samples": "triples"}))
    with pytest.raises(ValueError, match="pairwise=False with samples='pairs'"):
        register_objective(dataclasses.make_dataclass("Bad3", [], bases=(ToySimPO,), frozen=True,
                                                      namespace={"name": "bad_toy3", "pairwise": False}))
    with pytest.raises(ValueError, match="task_defaults names"):
        register_objective(dataclasses.make_dataclass("Bad2", [], bases=(ToySimPO,), frozen=True,
                                                      namespace={"name": "bad_toy2", "task_defaults": {"eta": 1}}))
    with pytest.raises(TypeError, match="dataclass subclass of Objective"):
        register_objective(int)
    assert "bad_toy" not in OBJECTIVES and "bad_toy2" not in OBJECTIVES
