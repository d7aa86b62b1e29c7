"""TRL / HF ``TrainingArguments`` names accepted by ``inpo train``, each mapped onto the key that means the same.

:func:`translate` turns one ``(key, value)`` of a YAML file or the command line into ``[(our_key, value), ...]``
(most names are a plain rename, :data:`ALIASES`; a few need their value looked at). ``loss_type`` maps TRL 1.16's
losses onto an objective plus its ``objective_args`` (:data:`LOSS_TYPES`): ``ipo`` is TRL's per-token IPO (our
``objective: ipo`` with ``length_normalize: true``); the summed-log-prob IPO is ``objective: ipo`` alone.
Where TRL 1.16 would silently ignore a key (``label_smoothing`` under ``loss_type: sigmoid``), the config refuses
it instead of computing something TRL would not.
"""

from __future__ import annotations

__all__ = ["ALIASES", "LOSS_TYPES", "TRL_BATCH", "HINTS", "translate", "trl_key_notes"]

# Plain renames: a TRL / HF name -> ours (same meaning and units).
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "model_name_or_path": "model", "output_dir": "output",
           "gradient_checkpointing": "activation_checkpointing", "num_generations": "k", "torch_compile": "compile",
           "use_liger_kernel": "liger", "save_steps": "checkpoint_every", "save_total_limit": "keep_checkpoints"}
# Names whose value decides what they set (handled in translate below); listed so hints and --help know them.
SPECIAL = ("adam_beta1", "adam_beta2", "loss_type", "per_device_train_batch_size", "gradient_accumulation_steps",
           "bf16", "warmup_steps", "max_steps", "optim", "use_vllm", "vllm_mode", "vllm_tensor_parallel_size",
           "vllm_enable_sleep_mode")
# TRL 1.16 loss_type -> (objective, objective_args) with the same loss.
LOSS_TYPES = {"sigmoid": ("dpo", {}), "ipo": ("ipo", {"length_normalize": True}),
              "sigmoid_norm": ("dpo", {"length_normalize": True})}
# TRL's defaults for the two batch-size keys when only the other one is given.
TRL_BATCH = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
# What inpo's AdamW is: torch.optim.AdamW (fused kernel on CUDA, foreach on CPU), as these two TRL names.
_OPTIMS = ("adamw_torch", "adamw_torch_fused")
# TRL vLLM settings inpo has one value of: that value is accepted (and changes nothing), any other is refused.
# (TRL's vllm_max_model_length, vllm_gpu_memory_utilization and vllm_model_impl are config keys of the same name.)
VLLM_FIXED = {
    "vllm_mode": ("colocate", "inpo runs one vLLM engine inside the run (TRL's colocate mode); no vLLM server"),
    "vllm_tensor_parallel_size": (1, "the vLLM engine runs on one device per rank"),
    "vllm_enable_sleep_mode": (False, "the engine keeps its memory between sampling phases"),
}
# Names whose closest spelling is a key with another meaning: the hint says what to use instead.
HINTS = {"max_seq_length": "max_length", "warmup": "warmup_ratio", "max_new_token": "max_new_tokens",
         "num_iterations": "iterations", "lr_scheduler": "lr_scheduler_type", "eval_steps": "evaluate (after each "
         "iteration)", "max_prompt_tokens": "max_prompt_length", "generation_batch_size": "gen_batch_size",
         "num_samples": "k", "dataset": "data (offline pairs) or prompts (online)"}


def _loss_type(value, where: str) -> list:
    if isinstance(value, (list, tuple)) and len(value) == 1:  # TRL stores loss_type as a list
        value = value[0]
    if value not in LOSS_TYPES:
        raise ValueError(f"{where}: loss_type {value!r} has no inpo objective with the same loss; TRL names "
                         f"accepted: {sorted(LOSS_TYPES)} (else use objective: inpo|onpo|ipo|dpo|sppo)")
    objective, args = LOSS_TYPES[value]
    return [("objective", objective), ("_loss_type", value)] + [(f"objective_args.{k}", v) for k, v in args.items()]


def _warmup_steps(value, where: str) -> list:
    # transformers 5: warmup_steps >= 1 is a number of steps, a float below 1 a fraction of the steps.
    if isinstance(value, float) and 0 <= value < 1:
        return [("warmup_ratio", value)]
    return [("warmup_steps", value)]


def _bf16(value, where: str, as_bool) -> list:
    if not as_bool(value, "bf16", where):
        raise ValueError(f"{where}: bf16=false is not supported: inpo keeps fp32 master weights and runs the "
                         f"body under bf16 autocast on CUDA (fp32 on CPU); drop the key")
    return []  # what inpo does anyway on CUDA (TRL's bf16=True: bf16 mixed precision)


def _optim(value, where: str) -> list:
    if value not in _OPTIMS:
        raise ValueError(f"{where}: optim {value!r} is not available; inpo's optimiser is torch AdamW "
                         f"(= TRL's {' / '.join(_OPTIMS)}), tuned with adam_beta1/adam_beta2/adam_epsilon/weight_decay")
    return []


def _vllm(key: str, value, where: str, as_bool) -> list:
    if key == "use_vllm":  # TRL: vLLM or the model's generate
        return [("sampler", "vllm" if as_bool(value, key, where) else "hf")]
    only, why = VLLM_FIXED[key]
    if (as_bool(value, key, where) if isinstance(only, bool) else value) != only:
        raise ValueError(f"{where}: {key}={value!r} is not supported ({why}); only {only!r}")
    return []


def translate(key: str, value, where: str, as_bool) -> list | None:
    """``[(our_key, value), ...]`` for a TRL / HF name (``objective_args.NAME`` for an objective parameter,
    ``_batch.NAME`` for the two batch-size keys, resolved together later), or None when ``key`` is not one."""
    if key in ALIASES:
        return [(ALIASES[key], value)]
    if key in ("adam_beta1", "adam_beta2"):
        return [(f"betas.{0 if key == 'adam_beta1' else 1}", value)]
    if key in TRL_BATCH:
        return [(f"_batch.{key}", value)]
    if key == "max_steps" and value == -1:  # TRL's "no limit"
        return [("max_steps", None)]
    handlers = {"loss_type": lambda: _loss_type(value, where), "warmup_steps": lambda: _warmup_steps(value, where),
                "bf16": lambda: _bf16(value, where, as_bool), "optim": lambda: _optim(value, where)}
    if key == "use_vllm" or key in VLLM_FIXED:
        return _vllm(key, value, where, as_bool)
    return handlers[key]() if key in handlers else None


def trl_key_notes() -> str:
    """The accepted TRL names, for ``inpo train --help``."""
    return ", ".join(sorted(set(ALIASES) | set(SPECIAL)))
