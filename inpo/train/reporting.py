"""What a run reports, in the names users already read: TRL's ``rewards/*`` and ``logps/*`` beside ours in every
step record, TensorBoard and Weights & Biases through their own libraries (``report_to``, TRL's key), a plain-text
progress line every ``logging_steps`` steps when no progress bar is shown (stdout not a terminal, or
``progress: false``), and the closing summary of a run.

TRL's definitions, per pair of a step (means over the step's pairs, all ranks):

* ``logps/chosen``, ``logps/rejected``: summed response log-probs log π_θ(y|x) of the chosen / rejected response;
* ``rewards/chosen``, ``rewards/rejected``: the implicit reward β·(log π_θ(y|x) − log π_ref(y|x));
* ``rewards/margins``: chosen minus rejected reward; ``rewards/accuracies``: the share of pairs with
  reward(chosen) > reward(rejected).

For DPO and IPO this is TRL's formula with the run's β and π_ref (iterative DPO: the reference is π_t, as in its
loss). The Nash objectives measure π_θ against another distribution and have no β; they use the objective's own
(:meth:`inpo.objectives.Objective.implicit_rewards`): INPO η·(log π_θ − (τ/η)·log π_ref − (1 − τ/η)·log π_t), ONPO
(1/η)·(log π_θ − log π'_{t+1}); the scale puts each regression target at a reward margin of 1/2, as for IPO.
SPPO is per sequence (no chosen/rejected) and reports no TRL pair metrics.

Iterations are numbered from 0 everywhere: ``iter_000/``, the metrics' ``iteration`` field, the progress lines
and the closing table.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from inpo.train.rundir import record_entry

__all__ = ["REPORTERS", "parse_report_to", "TRL_PAIR_KEYS", "pair_metric_sums", "trl_metrics", "Reporter",
           "step_line", "run_summary"]

REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # report_to name -> the package it needs

# Summed per step (then divided by the pair count): the order of pair_metric_sums' output.
TRL_PAIR_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected")


def parse_report_to(value, *, check_installed: bool = True) -> list[str]:
    """``report_to`` (none | all | tensorboard | wandb, a comma list or a YAML list) → the integrations to use.
    Raises ValueError naming ``report_to`` for an unknown name, or for a named integration whose package is not
    installed (with the extra that installs it). ``all`` means every installed one, as in transformers."""
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else re.split(r"[,\s\[\]'\"]+", str(value or ""))
    items = [x.strip().lower() for x in items if x and x.strip()]
    if not items or items == ["none"]:
        return []
    unknown = [x for x in items if x not in REPORTERS and x not in ("all", "none")]
    if unknown:
        raise ValueError(f"report_to={value!r}: unknown integration(s) {unknown}; expected none, all, "
                         f"{', '.join(REPORTERS)} or a comma-separated list of them")
    installed = [n for n, pkg in REPORTERS.items() if importlib.util.find_spec(pkg) is not None]
    if "all" in items:
        return installed
    names = list(dict.fromkeys(x for x in items if x != "none"))
    missing = [n for n in names if n not in installed]
    if missing and check_installed:
        pkgs = " ".join(REPORTERS[n] for n in missing)
        extras = ",".join(missing)
        raise ValueError(f"report_to={value!r} needs the {pkgs!r} package(s), which are not installed: "
                         f"pip install 'inpo[{extras}]' (or pip install {pkgs})")
    return names


# -- TRL's pair metrics -------------------------------------------------------------------------------------------

def pair_metric_sums(objective, logps: Tensor, side: dict) -> Tensor:
    """[len(TRL_PAIR_KEYS)] sums over the pairs of one micro-batch (sequences 2i chosen, 2i+1 rejected)."""
    ref, anchor = side.get("ref_logps"), side.get("anchor_logps")
    rewards = objective.implicit_rewards(logps.float(), None if ref is None else ref.float(),
                                         None if anchor is None else anchor.float())
    rc, rr = rewards[0::2], rewards[1::2]
    return torch.stack([rc.sum(), rr.sum(), (rc > rr).float().sum(), logps[0::2].float().sum(),
                        logps[1::2].float().sum()])


def trl_metrics(sums, pairs: float) -> dict:
    """The step's means from :func:`pair_metric_sums`' totals over ``pairs`` pairs, plus ``rewards/margins``."""
    n = max(float(pairs), 1.0)
    out = {k: float(v) / n for k, v in zip(TRL_PAIR_KEYS, sums)}
    out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


# -- progress lines and the closing summary -----------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.4f}"
    return str(v)


def step_line(rec: dict, total: int) -> str:
    """One plain-text progress line for a step record (``iteration`` numbered from 0, like iter_000/)."""
    parts = [f"[inpo] iteration {rec['iteration']} {rec.get('phase', 'train')} step {rec['iter_step']}/{total} "
             f"(global {rec['step']})", f"loss {_fmt(rec['loss'])}", f"margin {_fmt(rec['margin'])}"]
    for k in ("rewards/accuracies", "rewards/margins"):
        if k in rec:
            parts.append(f"{k} {_fmt(rec[k])}")
    parts += [f"lr {rec['lr']:.2e}", f"grad_norm {_fmt(rec['grad_norm'])}", f"{rec['tokens_per_s']:.0f} tok/s"]
    return "  ".join(parts)


def run_summary(records: list[dict], steps: list[dict]) -> str:
    """The closing summary of a run without win-rates (offline): final loss and the last step's TRL metrics,
    plus any held-out metrics (``eval_*`` keys) the run recorded."""
    if not steps:
        return "[inpo] no training steps were run"
    last = steps[-1]
    it = records[-1] if records else {}
    lines = [f"[inpo] summary: {last['step']} steps, final loss {_fmt(last['loss'])}, margin {_fmt(last['margin'])}"]
    trl = [f"{k} {_fmt(last[k])}" for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen",
                                             "rewards/rejected", "logps/chosen", "logps/rejected") if k in last]
    if trl:
        lines.append("[inpo] last step: " + "  ".join(trl))
    held = {k: v for k, v in it.items() if k.startswith("eval_") and isinstance(v, (int, float)) and k != "eval_s"}
    if held:
        lines.append("[inpo] held-out: " + "  ".join(f"{k.removeprefix('eval_')} {_fmt(v)}" for k, v in held.items()))
    return "\n".join(lines)


# -- TensorBoard / W&B --------------------------------------------------------------------------------------------

_STEP_SCALARS = ("loss", "margin", "lr", "grad_norm", "tokens_per_s", "step_time_s", "mfu", *TRL_PAIR_KEYS,
                 "rewards/margins")
_TRL_RENAME = {"lr": "learning_rate"}


def _scalars(rec: dict) -> tuple[dict, int]:
    """A metrics record → (scalars with HF Trainer's ``train/`` / ``eval/`` prefixes, global step)."""
    if rec.get("kind") == "step":
        phase = rec.get("phase", "train")
        prefix = "train/" if phase == "train" else f"train_{phase}/"
        out = {prefix + _TRL_RENAME.get(k, k): float(rec[k]) for k in _STEP_SCALARS if k in rec}
        out[prefix + "epoch"] = float(rec.get("epoch", 0))
        out[prefix + "iteration"] = float(rec["iteration"])
        return out, int(rec["step"])
    out = {}
    for k, v in rec.items():
        if k in ("kind", "step") or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if k.startswith("win_rate") or k.startswith("eval_"):
            out["eval/" + k.removeprefix("eval_")] = float(v)
        else:
            out["iteration/" + k] = float(v)
    return out, int(rec.get("step", 0))


class _TensorBoard:
    def __init__(self, cfg, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = out / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in cfg.to_dict().items()) + "\n```")

    def log(self, scalars: dict, step: int, flush: bool) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, cfg, out: Path):
        import os

        import wandb

        self.wandb = wandb
        # WANDB_MODE=offline works without network (runs sync later with `wandb sync`); WANDB_PROJECT names it.
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "inpo"), dir=str(out), name=out.name,
                              config=cfg.to_dict(), reinit="finish_previous")

    def log(self, scalars: dict, step: int, flush: bool) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


_SINKS = {"tensorboard": _TensorBoard, "wandb": _WandB}


class Reporter:
    """The run's TensorBoard / W&B writers (rank 0 only), opened at the first record so that they start after the
    run directory is claimed, and closed by :meth:`close` (or at exit)."""

    def __init__(self, cfg, out: Path, is_main: bool):
        self.cfg, self.out = cfg, Path(out)
        self.names = parse_report_to(getattr(cfg, "report_to", "none")) if is_main else []
        self.sinks: list | None = None

    def log(self, rec: dict) -> None:
        if not self.names:
            return
        if self.sinks is None:
            for name in self.names:  # the folder each writes (tensorboard/, wandb/) is the run's own
                record_entry(self.out, name)
            self.sinks = [_SINKS[n](self.cfg, self.out) for n in self.names]
            atexit.register(self.close)
        scalars, step = _scalars(rec)
        for sink in self.sinks:
            sink.log(scalars, step, flush=rec.get("kind") != "step")

    def close(self) -> None:
        sinks, self.sinks, self.names = self.sinks or [], None, []  # closed: later records go to metrics.jsonl only
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - closing a logger must not fail a finished run
                print(f"[inpo] warning: closing {type(sink).__name__} failed: {exc}", file=sys.stderr)
