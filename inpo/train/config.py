"""One dataclass config for ``inpo train``: defaults < YAML file < ``--key value`` overrides.

The defaults are the embedded default task's (a tiny model on 2 CPU cores, 3 iterations in a few minutes).
The paper's η = 0.005 and lr = 5e-7 are for 8B models with ~300-token responses: there the INPO target
margin 1/(2η) = 100 nats is spread over hundreds of tokens of a model with a huge vocabulary. Our tiny policy
writes ~10-20-token responses, so the per-objective defaults below aim at a target margin of a few nats
(INPO η = 0.25 → 1/(2η) = 2; IPO β = 0.25 likewise). lr = 5e-4 for this 0.7 M-parameter model (1e-3 made the
regression overshoot and the win-rate fall; 2e-4 rose more slowly). K = 8 on all 435 train prompts gave the
steadiest rise over 3 iterations (tuned on 2 seeds; bench/results/experiments/ has 5 seeds per method).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from inpo.objectives import OBJECTIVES, Objective, make_objective

__all__ = ["TrainConfig", "load_config", "parse_overrides", "config_to_yaml"]

# Objective parameters when the config leaves them unset (None): tuned for the embedded default task.
OBJECTIVE_DEFAULTS = {
    "inpo": {"eta": 0.25, "ratio": 1.0 / 3.0},
    "onpo": {"eta": 4.0},
    "ipo": {"beta": 0.25},
    "dpo": {"beta": 0.5, "label_smoothing": 0.0},
    "sppo": {"eta": 0.25},
}


@dataclass
class TrainConfig:
    # -- run --
    output: str | None = None  # run directory (metrics.jsonl, checkpoints/, iter_*/, final/)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from output/checkpoints/latest
    # -- model --
    model: str | None = None  # local transformers dir; None = the embedded tiny default (built + cached)
    tokenizer: str | None = None  # local tokenizer dir; None = the model dir's, or the embedded default
    sft_seed: int = 0  # the embedded default π_ref's init + SFT seed (ignored with model)
    attn_implementation: str | None = None  # None = flash_attention_2 when it imports on CUDA, else inpo_varlen
    # -- objective --
    objective: str = "inpo"  # inpo | onpo | ipo | dpo | sppo
    eta: float | None = None  # INPO/ONPO/SPPO step (None = tuned default, see OBJECTIVE_DEFAULTS)
    ratio: float | None = None  # INPO τ/η in [0, 1]; 0 = no KL to π_ref (the τ = 0 ablation)
    beta: float | None = None  # DPO / IPO
    label_smoothing: float | None = None  # DPO
    # -- online iteration --
    iterations: int = 3
    prompts: str = "default"  # "default" or a .txt / .jsonl file
    n_prompts: int | None = None  # train prompts per iteration (None = all; else a fresh random subset each iteration)
    eval_prompts: str = "default"
    n_eval: int | None = None  # held-out prompts for the win-rate (None = the whole eval split)
    eval_k: int = 4  # responses per held-out prompt and policy (averaged per prompt; bootstrap over prompts)
    eval_seed: int = 12345  # sampling seed of the evaluation (fixed across iterations: common random numbers)
    k: int = 8  # responses sampled per prompt (the paper's K; best/worst by the oracle's tournament)
    oracle: str = "synthetic"  # synthetic | reward:PATH | pairwise:PATH
    pair_strategy: str = "best_worst"  # best_worst | random
    sampler: str = "hf"  # hf | vllm | auto (inpo.generation.auto_backend: the faster one where measured)
    sampler_dtype: str = "policy"  # vLLM engine dtype: policy (the policy's own) | float32 | bfloat16 | float16
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    gen_batch_size: int = 128
    evaluate: bool = True  # win-rate vs π_ref after each iteration
    n_bootstrap: int = 1000
    # -- offline --
    data: str | None = None  # JSONL of {"prompt","chosen","rejected"}: offline training instead of online
    # -- optimisation --
    epochs: int = 2
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    batch_pairs: int = 16  # pairs (sequences for SPPO) per optimiser step, summed over ranks
    max_tokens: int = 1024  # token budget of one packed micro-batch (grad accumulation over several)
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimiser steps in all
    checkpoint_every: int = 0  # also checkpoint every N steps (0 = at the end of each iteration only)
    keep_checkpoints: int = 2
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the decoder body
    liger: bool = False  # Liger RMSNorm/SwiGLU/RoPE kernels (needs liger-kernel, GPU)
    impl: str = "auto"  # fused head impl: auto | triton | native | torch | naive
    progress: bool = True  # rich progress bars
    threads: int | None = None  # CPU intra-op threads; None = 1 for the tiny default model on CPU, else torch's

    # ------------------------------------------------------------------
    def objective_params(self) -> dict:
        name = self.objective.lower()
        params = dict(OBJECTIVE_DEFAULTS[name])
        for key in params:
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params

    def make_objective(self) -> Objective:
        return make_objective(self.objective, **self.objective_params())

    def validate(self) -> "TrainConfig":
        if self.objective.lower() not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        self.objective = self.objective.lower()
        self.make_objective()  # the objective validates its own parameters (η > 0, ratio in [0, 1], ...)
        for name in ("iterations", "k", "epochs", "batch_pairs", "max_tokens", "max_new_tokens", "gen_batch_size",
                     "eval_k", "keep_checkpoints"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if self.k < 2:
            raise ValueError(f"k (responses per prompt) must be >= 2 to form a pair, got {self.k}")
        for name in ("max_steps", "n_prompts", "n_eval"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0 or null, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        from inpo.generation.base import BACKENDS, DTYPES

        if self.sampler not in BACKENDS:
            raise ValueError(f"sampler must be one of {', '.join(BACKENDS)}, got {self.sampler!r}")
        if self.sampler_dtype not in DTYPES:
            raise ValueError(f"sampler_dtype must be one of {', '.join(DTYPES)}, got {self.sampler_dtype!r}")
        if self.pair_strategy not in ("best_worst", "random"):
            raise ValueError(f"pair_strategy must be 'best_worst' or 'random', got {self.pair_strategy!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers [beta1, beta2], got {self.betas!r}")
        if self.data is not None and self.objective == "sppo":
            raise ValueError("objective 'sppo' needs K samples per prompt and win-rate targets: online only, not "
                             "with data= (offline pairs); use dpo, ipo or inpo offline")
        if self.data is not None and self.objective == "onpo":
            raise ValueError("objective 'onpo' is an online method (two regressions per iteration); offline, use "
                             "dpo, ipo or inpo")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


# TRL / HF TrainingArguments names users type out of habit → ours.
_HF_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs",
             "loss_type": "objective", "model_name_or_path": "model",
             "output_dir": "output", "gradient_checkpointing": "activation_checkpointing",
             "max_length": "max_tokens", "num_generations": "k", "torch_compile": "compile", "use_liger_kernel": "liger"}


def _nearest(key: str) -> str:
    if key in _HF_NAMES and _HF_NAMES[key] in _FIELDS:
        return f"; did you mean {_HF_NAMES[key]!r}?"
    near = difflib.get_close_matches(key, _FIELDS, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(_FIELDS))}"


def _coerce(key: str, value, where: str):
    """Cast a YAML / command-line value to the field's declared type, or raise naming the key."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{where}: {key} cannot be null (expected {getattr(base, '__name__', base)})")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            return [float(v) for v in value]
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ValueError(f"{where}: {key} expects {getattr(base, '__name__', str(base))}, got {value!r}")


def _apply(cfg: TrainConfig, updates: dict, where: str) -> None:
    for key, value in updates.items():
        norm = str(key).replace("-", "_")
        if norm not in _FIELDS:
            raise ValueError(f"{where}: unknown config key {key!r}{_nearest(norm)}")
        setattr(cfg, norm, _coerce(norm, value, where))


def parse_overrides(argv: list[str]) -> dict:
    """``--key value`` / ``--key=value`` / bare ``--flag`` (= true) → {key: raw value}. Values are parsed as
    YAML scalars (``1e-3`` → float, ``null`` → None) and cast to the field's type later."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ValueError(f"unexpected argument {arg!r}: options are --key value (see `inpo train --help`)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        parsed = yaml.safe_load(value) if value.strip() else value
        out[key.replace("-", "_")] = value if isinstance(parsed, (dict, list)) and key not in ("betas",) else parsed
        i += 1
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file (a flat mapping of keys), then the overrides; validated."""
    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(p)!r} must be a mapping of keys to values, got {type(data).__name__}")
        _apply(cfg, data, f"config file {p}")
    if overrides:
        _apply(cfg, overrides, "command line")
    return cfg.validate()


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
