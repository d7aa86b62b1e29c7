"""One dataclass config for ``inpo train``: defaults < YAML file < ``--key value`` overrides.

Defaults depend on the model. Without ``model`` they are the embedded default task's (a tiny model on 2 CPU
cores, 3 iterations in a few minutes), below. With ``model=DIR`` (a real LM) the unset keys take TRL's and the
papers' values instead (:data:`MODEL_DEFAULTS`, :data:`MODEL_OBJECTIVE_DEFAULTS`: lr 5e-7 / 1e-6, β = 0.1,
INPO η = 0.0075, max_length 1024), and the run prints which ones it took. TRL / HF ``TrainingArguments`` names
are accepted where they mean the same thing (:data:`ALIASES`: ``learning_rate``, ``num_train_epochs``,
``per_device_train_batch_size`` × ``gradient_accumulation_steps`` × world size = ``batch_pairs``, ...).

Embedded-task defaults:
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
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from inpo.data.chat import Truncation
from inpo.data.textio import read_utf8
from inpo.models import resolve_model
from inpo.objectives import OBJECTIVES, Objective, make_objective
from inpo.ops.checks import check_grad_filter
from inpo.train.reporting import parse_report_to
from inpo.utils.choices import SAMPLER_BACKENDS, SAMPLER_DTYPES

__all__ = ["TrainConfig", "load_config", "parse_overrides", "config_to_yaml"]

# Objective parameters when the config leaves them unset (None): tuned for the embedded default task ...
OBJECTIVE_DEFAULTS = {
    "inpo": {"eta": 0.25, "ratio": 1.0 / 3.0},
    "onpo": {"eta": 4.0},
    "ipo": {"beta": 0.25},
    "dpo": {"beta": 0.5, "label_smoothing": 0.0},
    "sppo": {"eta": 0.25},
}
# ... and with model=DIR: TRL's DPOConfig (beta 0.1 for sigmoid and ipo), the INPO authors' code (η = 0.0075,
# τ/η = 1/3), ONPO with the same target margin as that INPO (η/2 = 1/(2·0.0075)), SPPO's paper (its η = 1e3 is
# our 1/η).
MODEL_OBJECTIVE_DEFAULTS = {
    "inpo": {"eta": 0.0075, "ratio": 1.0 / 3.0},
    "onpo": {"eta": 1.0 / 0.0075},
    "ipo": {"beta": 0.1},
    "dpo": {"beta": 0.1, "label_smoothing": 0.0},
    "sppo": {"eta": 1e-3},
}
# Keys left None resolve by the model: (embedded task, model=DIR). lr with a model: the INPO / SPPO papers' 5e-7,
# TRL DPOConfig's 1e-6 for DPO / IPO; max_length: TRL's 1024; max_new_tokens: TRL OnlineDPOConfig's 64;
# max_tokens (the packed micro-batch budget) must hold a pair of max_length sequences.
_NULL_MEANS_OFF = {"max_length"}  # an explicit null here means "no limit", not "the default"
EMBEDDED_DEFAULTS = {"lr": 5e-4, "max_new_tokens": 24, "max_tokens": 1024, "max_length": None}
MODEL_DEFAULTS = {"lr": {"inpo": 5e-7, "onpo": 5e-7, "sppo": 5e-7, "dpo": 1e-6, "ipo": 1e-6},
                  "max_new_tokens": 64, "max_tokens": 4096, "max_length": 1024}


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
    chat_template: str = "auto"  # auto: the tokenizer's template | none: plain text (a base model; TRL's standard format)
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
    oracle: str = "synthetic"  # synthetic | format | reward:PATH | pairwise:PATH | judge:PATH (a chat model)
    pair_strategy: str = "best_worst"  # best_worst | random
    sampler: str = "auto"  # hf | vllm | auto (inpo.generation.auto_backend: the faster one, as measured)
    sampler_dtype: str = "policy"  # vLLM engine dtype: policy (the policy's own) | float32 | bfloat16 | float16
    max_new_tokens: int | None = None  # None: 24 for the embedded task, 64 with model=DIR
    temperature: float = 1.0
    top_p: float = 1.0
    gen_batch_size: int = 128
    evaluate: bool = True  # win-rate vs π_ref after each iteration
    n_bootstrap: int = 1000
    # -- offline --
    data: str | None = None  # JSONL of {"prompt","chosen","rejected"}: offline training instead of online
    eval_data: str | None = None  # offline: held-out pairs (TRL's eval_dataset) → eval_loss, eval_rewards/* at the end
    # -- sequence lengths (TRL's semantics, inpo.data.chat.Truncation) --
    max_length: int | None = None  # prompt + response tokens per sequence; None: no limit (embedded), 1024 (model)
    max_prompt_length: int | None = None  # a longer prompt keeps its last tokens (for generation too)
    max_completion_length: int | None = None  # a longer response keeps its first tokens
    truncation_mode: str = "keep_start"  # over max_length: keep_start (cut the end) | keep_end (cut the start)
    # -- optimisation --
    epochs: int = 2
    lr: float | None = None  # None: 5e-4 for the embedded task; with model=DIR 5e-7 (INPO/ONPO/SPPO), 1e-6 (DPO/IPO)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    batch_pairs: int = 16  # pairs (sequences for SPPO) per optimiser step, summed over ranks
    max_tokens: int | None = None  # token budget of one packed micro-batch (grad accumulation over several);
    # None: 1024 for the embedded task, 4096 with model=DIR
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimiser steps in all
    checkpoint_every: int = 0  # also checkpoint every N steps (0 = at the end of each iteration only)
    keep_checkpoints: int = 2
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the decoder body
    liger: bool = False  # Liger RMSNorm/SwiGLU/RoPE kernels (needs liger-kernel, GPU)
    impl: str = "auto"  # fused head impl: auto | triton | native | torch | naive
    head_grad_filter: float | None = None  # opt-in filter of the Triton head's backward: per-token budget of skipped softmax mass in (0, 1); None = exact (needs head_deterministic: false)
    head_deterministic: bool | None = None  # fixed-order head backward; None = on (--resume continues bit-exactly), false = the atomic backward (faster on GPU, last bits vary run to run)
    progress: bool = True  # rich progress bars
    keep_iterates: int | None = None  # online: keep the newest N iterate folders iter_<t>/policy (None = all)
    report_to: str = "none"  # none | tensorboard | wandb | all, or a comma list (TRL's report_to)
    logging_steps: int = 10  # a plain-text progress line every N steps when stdout is not a terminal
    threads: int | None = None  # CPU intra-op threads; None = 1 for the tiny default model on CPU, else torch's
    overwrite: bool = False  # a fresh start may replace a previous run (checkpoints, final/) in output

    # ------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """Whether this run trains the embedded default task's model (defaults tuned for it) or a user's."""
        return self.model is None

    def fill_defaults(self) -> dict:
        """Resolve the keys left None by the model (:data:`EMBEDDED_DEFAULTS` / :data:`MODEL_DEFAULTS`);
        returns ``{key: value}`` of what was filled (keys set explicitly, even to null, are left alone)."""
        explicit = getattr(self, "_explicit", set())
        table = EMBEDDED_DEFAULTS if self.embedded else MODEL_DEFAULTS
        filled = {}
        for key, value in table.items():
            if getattr(self, key) is None and not (key in explicit and key in _NULL_MEANS_OFF):
                if isinstance(value, dict):
                    value = value.get(self.objective.lower(), value["inpo"])
                if value is not None:
                    setattr(self, key, value)
                    filled[key] = value
        return filled

    def default_notes(self) -> str:
        """One line naming the model-dependent defaults this run took (printed at the start of a run)."""
        explicit = getattr(self, "_explicit", set())
        table = EMBEDDED_DEFAULTS if self.embedded else MODEL_DEFAULTS
        taken = {k: getattr(self, k) for k in table if k not in explicit}
        name = self.objective.lower()
        if name in OBJECTIVES:
            taken.update({k: v for k, v in self.objective_params().items() if getattr(self, k, None) is None})
        which = "the embedded task's defaults" if self.embedded else \
            "defaults for a user model (TRL / the papers'; override any with --key)"
        return f"{which}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in taken.items())

    def truncation(self):
        """The :class:`inpo.data.chat.Truncation` of this config (max_length, max_prompt_length, ...)."""

        return Truncation(max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                          max_completion_length=self.max_completion_length, mode=self.truncation_mode)

    def objective_params(self) -> dict:
        name = self.objective.lower()
        params = dict((OBJECTIVE_DEFAULTS if self.embedded else MODEL_OBJECTIVE_DEFAULTS)[name])
        for key in params:
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params

    def make_objective(self) -> Objective:
        return make_objective(self.objective, **self.objective_params())

    def head_options(self) -> dict:
        """``grad_filter`` / ``deterministic`` for the fused head in training. ``head_deterministic`` None means on:
        every run may be resumed, and ``--resume`` promises to continue bit-exactly."""
        return {"grad_filter": self.head_grad_filter,
                "deterministic": True if self.head_deterministic is None else self.head_deterministic}

    def validate(self) -> "TrainConfig":
        if self.objective.lower() not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        self.objective = self.objective.lower()
        self.model, self.tokenizer = resolve_model(self.model), resolve_model(self.tokenizer)  # smollm2 → its folder
        self.fill_defaults()
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
        self._validate_ranges()
        if self.sampler not in SAMPLER_BACKENDS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLER_BACKENDS)}, got {self.sampler!r}")
        if self.sampler_dtype not in SAMPLER_DTYPES:
            raise ValueError(f"sampler_dtype must be one of {', '.join(SAMPLER_DTYPES)}, got {self.sampler_dtype!r}")
        for name in ("keep_iterates", "logging_steps"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0{' or null' if name == 'keep_iterates' else ''}, got {v!r}")

        parse_report_to(self.report_to)  # ValueError naming report_to and the valid names
        if self.chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be 'auto' (the tokenizer's) or 'none' (plain text for a base model), "
                             f"got {self.chat_template!r}")
        self.truncation()  # validates max_length / max_prompt_length / max_completion_length / truncation_mode
        if self.pair_strategy not in ("best_worst", "random"):
            raise ValueError(f"pair_strategy must be 'best_worst' or 'random', got {self.pair_strategy!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers [beta1, beta2], got {self.betas!r}")
        if self.eval_data is not None and self.data is None:
            raise ValueError(f"eval_data={self.eval_data!r} is for offline runs (held-out pairs scored after training "
                             f"on data=...); online runs evaluate with eval_prompts")
        try:
            check_grad_filter(self.head_grad_filter)
        except ValueError as exc:
            raise ValueError(f"head_grad_filter: {exc}") from None
        if self.head_grad_filter and self.head_deterministic is not False:
            raise ValueError(f"head_grad_filter={self.head_grad_filter} acts on the atomic backward only; the "
                             "deterministic one (head_deterministic: null/true) has no filter -- set "
                             "head_deterministic: false to use it")
        if self.data is not None and self.objective == "sppo":
            raise ValueError("objective 'sppo' needs K samples per prompt and win-rate targets: online only, not "
                             "with data= (offline pairs); use dpo, ipo or inpo offline")
        if self.data is not None and self.objective == "onpo":
            raise ValueError("objective 'onpo' is an online method (two regressions per iteration); offline, use "
                             "dpo, ipo or inpo")
        return self

    def _validate_ranges(self) -> None:
        """Every numeric key in its meaningful range, before anything is loaded or written: a negative
        max_grad_norm flips the gradient, a negative min_lr_ratio or weight_decay inverts the update, NaN/inf
        poisons every step."""
        def finite(name, lo=None, hi=None, *, lo_open=False, hi_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v)
            if ok and lo is not None:
                ok = v > lo if lo_open else v >= lo
            if ok and hi is not None:
                ok = v < hi if hi_open else v <= hi
            if not ok:
                left = "(" if lo_open else "["
                right = ")" if hi_open or hi is None else "]"
                span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
                raise ValueError(f"{name} must be a finite number in {span}, got {v!r}")

        finite("lr", 0, lo_open=True)
        finite("max_grad_norm", 0, lo_open=True)
        finite("weight_decay", 0)
        finite("warmup_ratio", 0, 1, hi_open=True)
        finite("min_lr_ratio", 0, 1)
        finite("temperature", 0)
        finite("top_p", 0, 1, lo_open=True)
        for i, b in enumerate(self.betas):
            if not (isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1):
                raise ValueError(f"betas[{i}] must be a finite number in [0, 1), got {b!r}")
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {self.n_bootstrap!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null (torch's default), got {self.threads!r}")
        dev = self.device
        if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        if self.output is not None and not str(self.output).strip():
            raise ValueError("output must be a directory path, got an empty string")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


# TRL / HF TrainingArguments names that mean what one of our keys means: accepted as that key.
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "model_name_or_path": "model", "output_dir": "output",
           "gradient_checkpointing": "activation_checkpointing", "num_generations": "k", "torch_compile": "compile",
           "use_liger_kernel": "liger", "adam_beta1": None, "adam_beta2": None, "loss_type": "objective",
           "per_device_train_batch_size": None, "gradient_accumulation_steps": None, "bf16": None}
# TRL loss_type values with the same loss as one of our objectives.
_LOSS_TYPES = {"sigmoid": "dpo", "ipo": "ipo"}
# TRL's defaults for the two batch-size keys when only the other one is given.
_TRL_BATCH = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
# Names whose closest spelling is a key with another meaning: the hint says what to use instead.
_HINTS = {"max_seq_length": "max_length", "warmup": "warmup_ratio", "max_new_token": "max_new_tokens", "num_iterations": "iterations",
          "warmup_steps": "warmup_ratio (a fraction of the steps)", "lr_scheduler_type": "min_lr_ratio (cosine to "
          "lr * min_lr_ratio; the schedule is fixed)", "eval_steps": "evaluate (after each iteration)",
          "max_prompt_tokens": "max_prompt_length", "generation_batch_size": "gen_batch_size",
          "num_samples": "k", "dataset": "data (offline pairs) or prompts (online)"}


def _nearest(key: str) -> str:
    if key in _HINTS:
        return f"; did you mean {_HINTS[key]!r}?" if " " not in _HINTS[key] else f"; did you mean {_HINTS[key]}?"
    # A high cutoff: a hint must be a near-spelling, never a key of another meaning (max_prompt_length once
    # pointed at eval_prompts).
    names = list(_FIELDS) + list(ALIASES)
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if near:
        target = ALIASES.get(near[0], near[0]) if near[0] in ALIASES and ALIASES[near[0]] else near[0]
        return f"; did you mean {target!r}?"
    return f"; valid keys: {', '.join(sorted(_FIELDS))} (and TRL names: {', '.join(sorted(ALIASES))})"


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
            return _coerce_bool(value, key, where)
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
    explicit = cfg.__dict__.setdefault("_explicit", set())
    batch: dict = {}
    for key, value in updates.items():
        norm = str(key).replace("-", "_")
        if norm == "no_chat_template":  # --no-chat-template
            if _coerce_bool(value, norm, where):
                norm, value = "chat_template", "none"
            else:
                continue
        elif norm in _TRL_BATCH:
            batch[norm] = value
            continue
        elif norm == "bf16":
            if not _coerce_bool(value, norm, where):
                raise ValueError(f"{where}: bf16=false is not supported: inpo keeps fp32 master weights and runs the "
                                 f"body under bf16 autocast on CUDA (fp32 on CPU); drop the key")
            continue  # what inpo does anyway on CUDA (TRL's bf16=True: bf16 mixed precision)
        elif norm == "report_to" and value in (None, [], "[]"):
            value = "none"  # TRL's null / empty list: no integration
        elif norm == "loss_type":
            if value not in _LOSS_TYPES:
                raise ValueError(f"{where}: loss_type {value!r} has no inpo objective with the same loss; TRL names "
                                 f"accepted: {sorted(_LOSS_TYPES)} (else use objective: inpo|onpo|ipo|dpo|sppo)")
            norm, value = "objective", _LOSS_TYPES[value]
        elif norm in ("adam_beta1", "adam_beta2"):
            i = 0 if norm == "adam_beta1" else 1
            betas = list(cfg.betas)
            betas[i] = _coerce("lr", value, where)  # a float like lr
            norm, value = "betas", betas
        elif norm in ALIASES:
            norm = ALIASES[norm]
        if norm not in _FIELDS:
            raise ValueError(f"{where}: unknown config key {key!r}{_nearest(norm)}")
        if norm == "chat_template" and (value is None or str(value).lower() in ("none", "null")):
            value = "none"  # YAML's null and the word none both mean plain text (not "unset")
        else:
            value = _coerce(norm, value, where)
        setattr(cfg, norm, value)
        explicit.add(norm)
    if batch:
        if "batch_pairs" in updates or "batch-pairs" in updates:
            raise ValueError(f"{where}: give batch_pairs or TRL's per_device_train_batch_size / "
                             f"gradient_accumulation_steps, not both")
        import os

        sizes = {k: _coerce("batch_pairs", batch.get(k, d), where) for k, d in _TRL_BATCH.items()}
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        # TRL's effective batch (pairs per optimiser step, over all ranks); micro-batches are packed by max_tokens.
        cfg.batch_pairs = sizes["per_device_train_batch_size"] * sizes["gradient_accumulation_steps"] * world
        explicit.add("batch_pairs")


def _coerce_bool(value, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ValueError(f"{where}: {key} expects bool, got {value!r}")


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                                f"{key_node.start_mark.line + 1}); give each key once", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file (a flat mapping of keys), then the overrides; validated."""
    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"config file {str(p)!r} is a folder, not a YAML file; pass --config FILE.yaml")
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.load(read_utf8(p, what="config file"), Loader=_UniqueKeyLoader) or {}
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
