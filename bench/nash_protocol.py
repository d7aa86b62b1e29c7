"""The Nash-LM protocol's definitions, shared by its runner (bench/experiment_nash.py) and its report
(bench/experiment_nash_report.py): arms, settings, step levels, seeds, sizes, the calibration grid, and the
measures both sides compute (the style classes of samples, the KL of the pooled style mix)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from inpo.games import style_game
from inpo.oracles import make_oracle

STYLES = ("rock", "paper", "scissors", "none")  # the style classes, in the synthetic oracle's order
# arm -> config overrides, the tuned parameter, its calibration group, and the style-bandit algorithm that predicts it
# (algorithm, τ/η, onpo_start). INPO's τ/η arms and IPO share the "inpo" calibration (IPO's β is INPO's η there).
ARMS = {
    "inpo": dict(config={"objective": "inpo", "ratio": 1 / 3}, param="eta", group="inpo", bandit=("inpo", 1 / 3)),
    "inpo_r0.1": dict(config={"objective": "inpo", "ratio": 0.1}, param="eta", group="inpo", bandit=("inpo", 0.1)),
    "inpo_tau0": dict(config={"objective": "inpo", "ratio": 0.0}, param="eta", group="inpo", bandit=("inpo", 0.0)),
    "inpo_random": dict(config={"objective": "inpo", "ratio": 1 / 3, "pair_strategy": "random", "k": 2},
                        param="eta", group="inpo_random", bandit=("inpo", 1 / 3)),
    "onpo": dict(config={"objective": "onpo"}, param="eta", group="onpo", bandit=("onpo", 0.0)),
    "dpo": dict(config={"objective": "dpo"}, param="beta", group="dpo", bandit=("dpo", 0.0)),
    "ipo": dict(config={"objective": "ipo"}, param="beta", group="inpo", bandit=("ipo", 1.0)),
}
REFERENCE_ARM = "inpo"
# group -> (the arm that runs it, the centre of its 5-value grid). Centres from pilot runs on the calibration seed.
GROUPS = {"inpo": ("inpo", 0.125), "inpo_random": ("inpo_random", 0.0625), "onpo": ("onpo", 4.0), "dpo": ("dpo", 1.0)}
GRID_FACTOR = 4.0
MAX_WIDEN = 3  # extra grid values per side before an edge pick is reported as unreachable
SATURATED = 1.15  # an edge whose KL moved by less than this factor from its neighbour's is not widened further
OFF_TARGET = 1.5  # a pick whose KL is off its target by more than this factor gets refinement midpoints (twice at most)
LEVELS = {"large": 0.2, "small": 0.03}  # target KL(π_1 ‖ π_0) of the pooled style mix
SETTINGS = {
    "style": {"alpha": 0.0, "beta": 2.0, "none_penalty": 1.0, "quality_margin": 0.0},
    "cyclic": {"alpha": 8.0, "beta": 2.0, "none_penalty": 1.0, "quality_margin": 0.25},
}
PRIMARY = "style"
SEEDS = {("style", "large"): 4, ("style", "small"): 2, ("cyclic", "large"): 2}
# the secondary setting runs the main contrasts only (INPO, its τ = 0 ablation, ONPO, DPO, IPO): the CPU budget
SETTING_ARMS = {"cyclic": ("inpo", "inpo_tau0", "onpo", "dpo", "ipo")}
CALIBRATION_SEED = 100
BASE = {"iterations": 15, "k": 8, "eval_k": 16, "epochs": 2, "max_new_tokens": 24, "n_prompts": 128,
        "n_bootstrap": 100, "keep_iterates": 1, "keep_checkpoints": 1}
QUICK = {"iterations": 2, "k": 4, "eval_k": 4, "epochs": 1, "max_new_tokens": 12, "n_bootstrap": 20, "n_prompts": 12,
         "n_eval": 8, "batch_pairs": 4}
QUICK_SEEDS = {("style", "large"): 2, ("style", "small"): 1}
SPLIT = (0.6, 0.2)  # train, validation; the rest is test
# π_ref's shape: the embedded tiny default, or a larger Llama of the same task (same tokenizer, same SFT warm start
# per seed) for the GPU recipe (bench/device/nash.md), with its own learning rate and GPU-sized micro-batches.
SHAPES = {
    "tiny": {},
    "small": {"shape": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=8), "sft": {"steps": 600, "lr": 1e-3},
              "train": {"lr": 2e-4, "max_tokens": 8192, "gen_batch_size": 512}},
}


@dataclass(frozen=True)
class Job:
    stage: str  # "calibrate" | "final"
    setting: str
    arm: str
    seed: int
    value: float
    level: str = ""  # final runs: the step level their value was picked for

    @property
    def key(self) -> str:
        """The run's cache key: one run serves both step levels when their picks coincide."""
        return f"{self.stage}/{self.setting}/{self.arm}/seed{self.seed}_v{self.value:.6g}"

    @property
    def analysis_key(self) -> str:
        return f"{self.key}_{self.level}" if self.level else self.key


def oracle_spec(setting: str) -> str:
    return "synthetic:" + ",".join(f"{k}={v}" for k, v in SETTINGS[setting].items())


def grid(group: str, widen_low: int = 0, widen_high: int = 0, half: int = 2) -> list[float]:
    """The group's log grid: 2·half + 1 values around its centre (factor 4 apart: 5 by default), widened by that many
    values per side."""
    centre = GROUPS[group][1]
    return [round(centre * GRID_FACTOR ** i, 10) for i in range(-half - widen_low, half + 1 + widen_high)]


def protocol_id(quick: bool, shape: str = "tiny") -> str:
    """A short hash of everything that decides what a run computes (arms, settings, sizes, split, π_ref's shape):
    cached runs live under it, so a changed protocol never silently reuses runs of another one."""
    spec = {"arms": {a: v["config"] for a, v in ARMS.items()}, "settings": SETTINGS, "split": SPLIT,
            "base": {**BASE, **(QUICK if quick else {})}}
    if shape != "tiny":
        spec["shape"] = SHAPES[shape]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def first_kl(result: dict, setting: str) -> float:
    """KL(π_1 ‖ π_0) of the pooled style mix between a run's first iterate and its π_ref (same prompts and seed)."""
    mix = [style_counts(setting, result["prompts"], result["samples"][str(t)]).sum(axis=0) for t in (1, 0)]
    return kl(*mix)


@lru_cache(maxsize=None)
def oracle_of(setting: str):
    return make_oracle(oracle_spec(setting))


@lru_cache(maxsize=None)
def style_matrix(setting: str) -> np.ndarray:
    """The setting's style bandit P(s ≻ s') over (rock, paper, scissors, none)."""
    opts = SETTINGS[setting]
    return style_game(opts["beta"], opts["none_penalty"])


def style_counts(setting: str, prompts: list, samples: list) -> np.ndarray:
    """[prompts, 4] counts of each style class among each prompt's samples."""
    oracle = oracle_of(setting)
    return np.stack([np.bincount(oracle.feature_arrays(x, ys)[1], minlength=4) for x, ys in zip(prompts, samples)])


def kl(p_counts, q_counts) -> float:
    """KL(p ‖ q) of two count vectors, each smoothed by ½ per class (Jeffreys) so an empty class stays finite."""
    p = np.asarray(p_counts, np.float64) + 0.5
    q = np.asarray(q_counts, np.float64) + 0.5
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))
