"""The run's models: the tokenizer, π_ref (frozen), the policy being trained, ONPO's auxiliary chain π', and under
torchrun a plain (unsharded) twin of the policy that receives π_t's full weights before it samples or is scored."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from inpo._optional import require
from inpo.data.tokenizer import resolve_tokenizer
from inpo.ops.attention import default_implementation
from inpo.online.shard import Shard
from inpo.train.config import TrainConfig
from inpo.train.distributed import shard_policy
from inpo.train.loop import resolve_device
from inpo.train.model import load_policy


def run_tokenizer(cfg: TrainConfig):
    """The run's tokenizer (:func:`inpo.data.tokenizer.resolve_tokenizer` from ``tokenizer`` / ``model`` /
    ``chat_template``), refused here, before anything is written, when it cannot encode the run's data."""
    return resolve_tokenizer(cfg.tokenizer, cfg.model, plain_text=cfg.chat_template == "none")


def attn_impl(cfg: TrainConfig, device: torch.device) -> str:
    return cfg.attn_implementation or default_implementation(device)


def prepare_policy(cfg: TrainConfig, model):
    """Training-time transforms of the policy: Liger kernels, activation checkpointing, compiled body."""
    if cfg.liger:
        liger = require("liger_kernel").transformers
        liger.apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                          fused_linear_cross_entropy=False, model=model)
    if cfg.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.compile:
        model.base_model.compile(dynamic=True)
    return model


def setup(cfg: TrainConfig):
    """Device, tokenizer, π_ref (frozen) and the policy (a copy of π_ref, prepared for training)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars would drown our own
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and cfg.model is None:
        # The default model's matrices are ~128 wide: a second thread's sync costs more than it saves, and on a
        # busy 2-core box two spinning threads were 2-10x slower than one (measured while writing this).
        torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    tokenizer = run_tokenizer(cfg)
    ref = load_policy(cfg.model, tokenizer=tokenizer, device=device, attn_implementation=attn_impl(cfg, device),
                      default_seed=cfg.sft_seed)
    ref.eval().requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True)
    return device, tokenizer, ref, prepare_policy(cfg, policy)


@dataclass
class Models:
    """π_ref, the policy, ONPO's auxiliary chain π' (or None) and, under torchrun when the run samples, the plain
    twin of the policy (or None)."""

    ref: torch.nn.Module
    policy: torch.nn.Module
    aux: torch.nn.Module | None = None
    twin: torch.nn.Module | None = None

    @classmethod
    def build(cls, ref, policy, shard: Shard, *, aux_chain: bool, twin: bool) -> Models:
        """Under torchrun the policy (and π', π'_0 = π_ref) is sharded with FSDP2; ``twin``: a plain copy of π_ref
        that samples and scores π_t (a sharded model cannot generate)."""
        twin_model = copy.deepcopy(ref) if twin and shard.world > 1 else None
        aux = copy.deepcopy(ref).requires_grad_(True) if aux_chain else None
        if shard.world > 1:
            policy = shard_policy(policy)
            aux = shard_policy(aux) if aux is not None else None
        return cls(ref=ref, policy=policy, aux=aux, twin=twin_model)

    def current(self) -> torch.nn.Module:
        """π_t as a plain model on this rank: the policy itself, or its twin loaded with the policy's full weights
        (collective: every rank calls it)."""
        if self.twin is None:
            return self.policy
        load_full_weights(self.policy, self.twin)
        return self.twin


def load_full_weights(model, plain) -> None:
    """Copy the (FSDP2-sharded) ``model``'s full weights into the plain twin ``plain``. Collective: every rank
    calls it and every rank gets the full tensors."""
    # cpu_offload=True would hand the full tensors to rank 0 only: every rank generates, so keep them everywhere.
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    full = {k.removeprefix("model."): v for k, v in full.items()}  # FusedHeadPolicy's prefix
    missing, unexpected = plain.load_state_dict(full, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(plain.config, "tie_word_embeddings",
                                                                          False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"sampler twin does not match the policy: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
