"""One dataclass config for ``inpo train``: defaults < YAML file < ``--key value`` overrides.

Defaults depend on the model. Without ``model`` they are the embedded default task's (a tiny model on 2 CPU
cores, 3 iterations in a few minutes): :data:`EMBEDDED_DEFAULTS` and each objective's ``task_defaults``. With
``model=DIR`` (a real LM) the unset keys take TRL 1.16's ``DPOConfig`` defaults for every optimiser and schedule
key (AdamW β = (0.9, 0.999), ε = 1e-8, no weight decay, no warm-up, linear decay to 0, 3 epochs, 8 pairs per step:
:data:`MODEL_DEFAULTS`, pinned against TRL's own defaults by ``tests/test_trl_parity.py``), TRL's max_length 1024
and the objective's own defaults (TRL's β = 0.1 and lr 1e-6 for DPO / IPO; the papers' for INPO / ONPO / SPPO);
the run prints which ones it took. TRL / HF ``TrainingArguments`` names are accepted where they mean the same
thing (:mod:`inpo.train.trl_names`: ``learning_rate``, ``num_train_epochs`` (fractions too), ``adam_epsilon``,
``per_device_train_batch_size`` × ``gradient_accumulation_steps`` × world size = ``batch_pairs``, ``loss_type``, ...).

The objective is ``objective`` plus ``objective_args`` (its parameters; see :mod:`inpo.objectives`). A parameter
may also be given as a top-level key (``eta: 0.1``, ``--beta 0.1``: the flat keys of older configs, and TRL's
``beta``); a key the chosen objective does not take is an error naming the objective and what it takes.

Embedded-task defaults: lr = 5e-4 for this 0.7 M-parameter model (1e-3 made the regression overshoot and the
win-rate fall; 2e-4 rose more slowly); K = 8 on all 435 train prompts gave the steadiest rise over 3 iterations
(tuned on 2 seeds; bench/results/experiments/ has 5 seeds per method). The objectives' task defaults (INPO
η = 0.25, ...) are explained in :mod:`inpo.objectives`.
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
from inpo.data.prompts import default_prompts
from inpo.models import resolve_model
from inpo.objectives import OBJECTIVES, Objective, make_objective, objective_class
from inpo.ops.checks import check_grad_filter
from inpo.train.optim import SCHEDULES
from inpo.train.reporting import parse_report_to
from inpo.train.trl_names import ALIASES, HINTS, TRL_BATCH, translate, trl_key_notes
from inpo.utils.choices import SAMPLER_BACKENDS, SAMPLER_DTYPES
from inpo.utils.io import read_utf8
from inpo.utils.memory import check_fits

__all__ = ["TrainConfig", "load_config", "parse_overrides", "config_to_yaml", "ALIASES", "EMBEDDED_DEFAULTS",
           "MODEL_DEFAULTS"]

# Keys left None resolve by the model: EMBEDDED_DEFAULTS (the embedded task, tuned for it) or MODEL_DEFAULTS
# (model=DIR: TRL 1.16 DPOConfig's defaults; max_new_tokens: TRL OnlineDPOConfig's 64; max_tokens, the packed
# micro-batch budget, must hold a pair of max_length sequences; lr: the objective's default_lr).
_NULL_MEANS_OFF = {"max_length"}  # an explicit null here means "no limit", not "the default"
EMBEDDED_DEFAULTS = {"lr": 5e-4, "max_new_tokens": 24, "max_tokens": 1024, "max_length": None,
                     "epochs": 2.0, "batch_pairs": 16, "betas": [0.9, 0.95], "warmup_ratio": 0.1,
                     "lr_scheduler_type": "inpo_cosine", "min_lr_ratio": 0.1}
MODEL_DEFAULTS = {"lr": {name: cls.default_lr for name, cls in OBJECTIVES.items()},  # shown by --help; see fill
                  "max_new_tokens": 64, "max_tokens": 4096, "max_length": 1024,
                  "epochs": 3.0, "batch_pairs": 8, "betas": [0.9, 0.999], "warmup_ratio": 0.0,
                  "lr_scheduler_type": "linear", "min_lr_ratio": 0.0}


@dataclass
class TrainConfig:
    # -- run --
    output: str | None = None  # run directory (metrics.jsonl, checkpoints/, iter_*/, final/)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from output/checkpoints/latest
    # -- model --
    model: str | None = None  # local transformers dir or a real-model name (smollm2); None = the embedded default
    tokenizer: str | None = None  # local tokenizer dir; None = the model dir's, or the embedded default
    chat_template: str = "auto"  # auto: the tokenizer's template | none: plain text (a base model; TRL's standard format)
    sft_seed: int = 0  # the embedded default π_ref's init + SFT seed (ignored with model)
    attn_implementation: str | None = None  # None = flash_attention_2 when it imports on CUDA, else inpo_varlen
    # -- objective --
    objective: str = "inpo"  # inpo | onpo | ipo | dpo | sppo (or a registered one); TRL's loss_type maps here
    objective_args: dict = field(default_factory=dict)  # its parameters (eta, ratio, beta, ...); unset = defaults
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
    # vLLM engine (TRL's vllm_* names; inpo.generation.vllm.VLLMSampler):
    vllm_max_model_length: int | None = None  # engine context; None: the model's (CUDA), what the run needs (CPU)
    vllm_gpu_memory_utilization: float = 0.4  # GPU memory fraction vLLM may take (CUDA; TRL: 0.3 GRPO, 0.55 online DPO)
    vllm_kv_cache_memory_bytes: int | None = None  # KV cache bytes; None: GPU from the fraction, CPU sized from the run
    vllm_model_impl: str = "auto"  # vllm | transformers | auto (vLLM's own, else its transformers backend)
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
    # None = by the model (EMBEDDED_DEFAULTS | MODEL_DEFAULTS: TRL 1.16's DPOConfig defaults with model=DIR)
    epochs: float | None = None  # passes over the iteration's data; a fraction stops part-way (as TRL)
    lr: float | None = None  # None: 5e-4 for the embedded task; with model=DIR the objective's (DPO/IPO 1e-6, else 5e-7)
    weight_decay: float = 0.0  # AdamW's, on matrices only (norms and biases never decay)
    betas: list[float] | None = None  # AdamW (beta1, beta2): [0.9, 0.95] embedded, TRL's [0.9, 0.999] with a model
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str | None = None  # linear | cosine | constant | constant_with_warmup (HF's) | inpo_cosine
    warmup_ratio: float | None = None  # warm-up steps as a fraction of the phase's steps (ceil)
    warmup_steps: int | None = None  # warm-up steps, overrides warmup_ratio (TRL's warmup_steps < 1 is a ratio)
    min_lr_ratio: float | None = None  # the schedule's floor, lr * min_lr_ratio (HF's cosine_with_min_lr)
    batch_pairs: int | None = None  # pairs (sequences for SPPO) per optimiser step, summed over ranks
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
        """Resolve the keys left None by the model (:data:`EMBEDDED_DEFAULTS` / :data:`MODEL_DEFAULTS`; lr with a
        model: the objective's ``default_lr``); returns ``{key: value}`` of what was filled (keys set explicitly,
        even to null, are left alone)."""
        explicit = getattr(self, "_explicit", set())
        table = EMBEDDED_DEFAULTS if self.embedded else MODEL_DEFAULTS
        filled = {}
        for key, value in table.items():
            if getattr(self, key) is None and not (key in explicit and key in _NULL_MEANS_OFF):
                if key == "lr" and not self.embedded:
                    value = objective_class(self.objective).default_lr
                if value is not None:
                    value = list(value) if isinstance(value, list) else value
                    setattr(self, key, value)
                    filled[key] = value
        parts = self.__dict__.pop("_beta_parts", {})  # TRL's adam_beta1 / adam_beta2, on top of betas
        if parts and self.betas is not None:
            self.betas = [parts.get(i, b) for i, b in enumerate(self.betas)]
            explicit.add("betas")
            filled.pop("betas", None)
        return filled

    def default_notes(self) -> str:
        """One line naming the model-dependent defaults this run took (printed at the start of a run)."""
        explicit = getattr(self, "_explicit", set())
        table = EMBEDDED_DEFAULTS if self.embedded else MODEL_DEFAULTS
        taken = {k: getattr(self, k) for k in table if k not in explicit}
        if self.objective.lower() in OBJECTIVES:
            taken.update({k: v for k, v in self.objective_params().items() if k not in self.objective_args})
        which = "the embedded task's defaults" if self.embedded else \
            "defaults for a user model (TRL's / the papers'; override any with --key)"
        return f"{which}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in taken.items())

    def truncation(self):
        """The :class:`inpo.data.chat.Truncation` of this config (max_length, max_prompt_length, ...)."""
        return Truncation(max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                          max_completion_length=self.max_completion_length, mode=self.truncation_mode)

    def objective_params(self) -> dict:
        """The objective's parameters: its defaults for a user's model, the embedded task's tuned values without a
        model, then ``objective_args``."""
        cls = objective_class(self.objective)
        params = cls.parameters()
        if self.embedded:
            params.update(cls.task_defaults)
        params.update(self.objective_args)
        return params

    def make_objective(self) -> Objective:
        return make_objective(self.objective, **self.objective_params())

    def head_options(self) -> dict:
        """``grad_filter`` / ``deterministic`` for the fused head in training. ``head_deterministic`` None means on:
        every run may be resumed, and ``--resume`` promises to continue bit-exactly."""
        return {"grad_filter": self.head_grad_filter,
                "deterministic": True if self.head_deterministic is None else self.head_deterministic}

    def validate(self) -> "TrainConfig":
        self._validate_objective()
        self.model, self.tokenizer = resolve_model(self.model), resolve_model(self.tokenizer)  # smollm2 → its folder
        self.fill_defaults()
        self.make_objective()  # the objective validates its own parameters (η > 0, ratio in [0, 1], ...)
        self._validate_counts()
        self._validate_ranges()
        for check in (_check_seeds, _check_online_sampling, _check_bootstrap_memory):
            check(self)
        self._validate_choices()
        self._validate_vllm()
        self.truncation()  # validates max_length / max_prompt_length / max_completion_length / truncation_mode
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
        return self

    def _validate_vllm(self) -> None:
        for name in ("vllm_max_model_length", "vllm_kv_cache_memory_bytes"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be a positive int or null, got {v!r}")
        u = self.vllm_gpu_memory_utilization
        if not (isinstance(u, (int, float)) and math.isfinite(u) and 0 < u <= 1):
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {u!r}")
        if self.vllm_model_impl not in _VLLM_MODEL_IMPLS:
            raise ValueError(f"vllm_model_impl must be one of {', '.join(_VLLM_MODEL_IMPLS)}, got "
                             f"{self.vllm_model_impl!r}")

    def vllm_options(self) -> dict:
        """The vLLM sampler's engine settings (:class:`inpo.generation.vllm.VLLMSampler`)."""
        return {"max_model_len": self.vllm_max_model_length,
                "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "kv_cache_memory_bytes": self.vllm_kv_cache_memory_bytes, "model_impl": self.vllm_model_impl}

    def _validate_objective(self) -> None:
        """The objective exists, takes every key of objective_args, and can run on this data."""
        name = self.objective.lower() if isinstance(self.objective, str) else self.objective
        if name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        self.objective, cls = name, OBJECTIVES[name]
        takes = list(cls.parameters())
        for key in self.objective_args:
            if key not in takes:
                users = sorted(n for n, c in OBJECTIVES.items() if key in c.parameters())
                also = f" ({key} is a parameter of {', '.join(users)})" if users else ""
                raise ValueError(f"{key} is not used by objective {name!r}, which takes "
                                 f"{', '.join(takes) or 'no parameters'}{also}")
        self._check_offline(cls)
        if self.__dict__.get("_loss_type") == "sigmoid" and self.objective_args.get("label_smoothing"):
            raise ValueError(f"loss_type: sigmoid with label_smoothing={self.objective_args['label_smoothing']}: "
                             "TRL 1.16's sigmoid loss ignores label_smoothing; for conservative DPO (smoothing "
                             "applied) write objective: dpo instead of loss_type, else drop label_smoothing")

    def _check_offline(self, cls) -> None:
        """Offline pairs (data=) feed objectives that train on pairs, without an auxiliary chain."""
        name = cls.name
        if self.data is not None and (cls.samples != "pairs" or cls.aux_chain):
            why = ("trains an auxiliary chain every iteration" if cls.aux_chain else
                   f"needs K {cls.samples} samples per prompt from the policy")
            offline = sorted(n for n, c in OBJECTIVES.items() if c.samples == "pairs" and not c.aux_chain)
            raise ValueError(f"objective {name!r} {why}: online only, not with data= (offline pairs); offline, use "
                             f"{', '.join(offline)}")

    def _validate_counts(self) -> None:
        for name in ("iterations", "k", "epochs", "batch_pairs", "max_tokens", "max_new_tokens", "gen_batch_size",
                     "eval_k", "keep_checkpoints"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if self.k < 2:
            raise ValueError(f"k (responses per prompt) must be >= 2 to form a pair, got {self.k}")
        for name in ("max_steps", "n_prompts", "n_eval", "keep_iterates", "logging_steps"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0{'' if name == 'logging_steps' else ' or null'}, got {v!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or null (then warmup_ratio), got {self.warmup_steps!r}")

    def _validate_choices(self) -> None:
        for name, value, valid in (("sampler", self.sampler, SAMPLER_BACKENDS),
                                   ("sampler_dtype", self.sampler_dtype, SAMPLER_DTYPES),
                                   ("lr_scheduler_type", self.lr_scheduler_type, SCHEDULES),
                                   ("pair_strategy", self.pair_strategy, ("best_worst", "random"))):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        parse_report_to(self.report_to)  # ValueError naming report_to and the valid names
        if self.chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be 'auto' (the tokenizer's) or 'none' (plain text for a base model), "
                             f"got {self.chat_template!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers [beta1, beta2], got {self.betas!r}")

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
        finite("adam_epsilon", 0, lo_open=True)
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
_VLLM_MODEL_IMPLS = ("auto", "vllm", "transformers")

_SEED_KEYS = ("seed", "sft_seed", "eval_seed")
_SEED_LIMIT = 2**63  # torch.manual_seed, numpy and the derived per-iteration seeds all accept [0, 2**63)


def _check_seeds(cfg: TrainConfig) -> None:
    """Seeds are ints in [0, 2**63): numpy refuses a negative one, much later (after the model has loaded)."""
    for key in _SEED_KEYS:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _SEED_LIMIT:
            raise ValueError(f"{key} must be an int in [0, 2**63), got {v!r}")


def _check_online_sampling(cfg: TrainConfig) -> None:
    """Online training needs K *different* responses per prompt: greedy decoding (temperature 0) samples K copies
    of one response, which the oracle ties and drops, leaving no pairs -- found only after a whole generation."""
    if cfg.data is None and cfg.temperature == 0:
        raise ValueError("temperature must be > 0 for online training: temperature 0 (greedy) samples the same "
                         f"response k={cfg.k} times per prompt, the oracle ties them, and no pair is left to train on; "
                         "use e.g. temperature: 1.0 (evaluation alone may be greedy: `inpo eval --temperature 0`)")


def _eval_prompt_count(cfg: TrainConfig) -> int:
    """Held-out prompts an evaluation scores: n_eval, the embedded task's eval split, or 1 (a user's file, not read
    at config time: the estimate below is then a lower bound)."""
    if cfg.n_eval is not None:
        return cfg.n_eval
    if cfg.prompts == "default" and cfg.eval_prompts == "default":
        return len(default_prompts("eval"))
    return 1


def bootstrap_bytes(n_bootstrap: int, n_prompts: int, k: int) -> int:
    """Peak bytes of the bootstrap CIs of one evaluation: the two-level exploitability bootstrap holds int64 index
    and float64 value arrays of n_bootstrap x (3 n_prompts + k) (inpo.exploitability.bootstrap_exploitability)."""
    return 8 * n_bootstrap * (3 * n_prompts + k)


def _check_bootstrap_memory(cfg: TrainConfig) -> None:
    """n_bootstrap bounded by the memory its replicates take (found only after an iteration's training, else)."""
    if not cfg.evaluate:
        return
    n = _eval_prompt_count(cfg)
    check_fits(bootstrap_bytes(cfg.n_bootstrap, n, cfg.eval_k),
               f"n_bootstrap={cfg.n_bootstrap} (x {n} held-out prompt(s), eval_k={cfg.eval_k})",
               "lower n_bootstrap (the default is 1000)")


def _objective_param_names() -> set:
    """Parameter names of the registered objectives: accepted as top-level keys (``--eta``, TRL's ``beta``)."""
    return {name for cls in OBJECTIVES.values() for name in cls.parameters()} - set(_FIELDS)


def _nearest(key: str) -> str:
    if key in HINTS:
        return f"; did you mean {HINTS[key]!r}?" if " " not in HINTS[key] else f"; did you mean {HINTS[key]}?"
    # A high cutoff: a hint must be a near-spelling, never a key of another meaning (max_prompt_length once
    # pointed at eval_prompts).
    names = list(_FIELDS) + list(ALIASES) + sorted(_objective_param_names())
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if near:
        return f"; did you mean {ALIASES.get(near[0], near[0])!r}?"
    return f"; valid keys: {', '.join(sorted(_FIELDS))} (and TRL names: {trl_key_notes()})"


def _base_type(key: str):
    """(the field's type without None, whether None is allowed)."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def _number(base, value):
    """``value`` as an int or a float (not a bool, not a fractional int); ValueError otherwise."""
    if isinstance(value, bool) or (base is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return base(value)


def _cast(base, value, key: str, where: str):
    """``value`` as ``base`` (bool, int, float, list of floats, dict, str); TypeError/ValueError if it is not one."""
    if base is bool:
        return _coerce_bool(value, key, where)
    if base in (int, float):
        return _number(base, value)
    origin = typing.get_origin(base)
    if (origin in (list, dict) or base in (list, dict)) and isinstance(value, str):
        value = yaml.safe_load(value)
    if origin is list:
        return [float(v) for v in value]
    if origin is dict or base is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if base is str:
        return str(value)
    return value


def _coerce(key: str, value, where: str):
    """Cast a YAML / command-line value to the field's declared type, or raise naming the key."""
    base, optional = _base_type(key)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{where}: {key} cannot be null (expected {getattr(base, '__name__', base)})")
    try:
        return _cast(base, value, key, where)
    except (TypeError, ValueError) as exc:
        if "expects bool" in str(exc):
            raise
    raise ValueError(f"{where}: {key} expects {getattr(base, '__name__', str(base))}, got {value!r}")


def _updates(updates: dict, where: str) -> list:
    """The (key, value) pairs of a YAML mapping / the command line in our names: TRL names translated,
    ``--no-chat-template`` and objective parameters given as top-level keys (``eta``, ``beta``) mapped."""
    out = []
    params = _objective_param_names()
    for key, value in updates.items():
        norm = str(key).replace("-", "_")
        trl = translate(norm, value, where, _coerce_bool)
        if trl is not None:
            out += trl
        elif norm == "no_chat_template":  # --no-chat-template
            out += [("chat_template", "none")] if _coerce_bool(value, norm, where) else []
        elif norm in params:
            out.append((f"objective_args.{norm}", value))
        else:
            out.append((norm, value))
    return out


def _set(cfg: TrainConfig, key: str, value, where: str) -> None:
    """Set one key (``objective_args.NAME``, ``betas.I`` and ``_batch.NAME`` are parts of a key)."""
    head, _, part = key.partition(".")
    if head == "objective_args" and part:
        cfg.objective_args = {**cfg.objective_args, part: value}  # the objective validates the value
    elif head == "betas" and part:  # adam_beta1 / adam_beta2: applied on top of betas once the model is known
        cfg.__dict__.setdefault("_beta_parts", {})[int(part)] = _coerce("adam_epsilon", value, where)  # a float
    elif head == "_batch":
        cfg.__dict__.setdefault("_batch", {})[part] = _coerce("batch_pairs", value, where)
    elif head == "_loss_type":
        cfg.__dict__["_loss_type"] = value
    elif head not in _FIELDS:
        raise ValueError(f"{where}: unknown config key {key!r}{_nearest(head)}")
    elif head == "chat_template" and (value is None or str(value).lower() in ("none", "null")):
        cfg.chat_template = "none"  # YAML's null and the word none both mean plain text (not "unset")
        cfg._explicit.add(head)
    else:
        value = _coerce(head, value, where)
        setattr(cfg, head, dict(cfg.objective_args, **value) if head == "objective_args" else value)
        cfg._explicit.add(head)


def _apply(cfg: TrainConfig, updates: dict, where: str) -> None:
    cfg.__dict__.setdefault("_explicit", set())
    cfg.__dict__.pop("_batch", None)
    for key, value in _updates(updates, where):
        _set(cfg, key, value, where)
    batch = cfg.__dict__.pop("_batch", None)
    if batch:
        if "batch_pairs" in updates or "batch-pairs" in updates:
            raise ValueError(f"{where}: give batch_pairs or TRL's per_device_train_batch_size / "
                             f"gradient_accumulation_steps, not both")
        import os

        sizes = {k: batch.get(k, d) for k, d in TRL_BATCH.items()}
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        # TRL's effective batch (pairs per optimiser step, over all ranks); micro-batches are packed by max_tokens.
        cfg.batch_pairs = sizes["per_device_train_batch_size"] * sizes["gradient_accumulation_steps"] * world
        cfg._explicit.add("batch_pairs")


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
