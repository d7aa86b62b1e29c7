"""FSDP2 (``torch.distributed.fsdp.fully_shard``) under ``torchrun``: process-group setup, sharding, teardown.

gloo on CPU (tests), nccl on CUDA. Each decoder layer is its own FSDP unit; the root unit is a
:class:`~inpo.train.model.FusedHeadPolicy` wrapper so that the embedding, final norm and LM head are
unsharded for the one forward that returns hidden states *and* the head weight for the fused head.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from inpo.train.model import FusedHeadPolicy

__all__ = ["distributed_session", "shard_policy"]


@contextmanager
def distributed_session():
    """Init the process group when launched by torchrun (WORLD_SIZE > 1); yields whether this is rank 0.
    Always barriers before ``destroy_process_group`` (gloo aborts at exit otherwise, see ENV-NOTES)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield (not dist.is_initialized()) or dist.get_rank() == 0
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # before init: NCCL communicators bind to the current device
    dist.init_process_group(backend)
    try:
        yield dist.get_rank() == 0
    finally:
        # NCCL: name the device, or the barrier guesses one (rank % GPUs, with a warning) for this process.
        dist.barrier(device_ids=[local_rank]) if backend == "nccl" else dist.barrier()
        dist.destroy_process_group()


def shard_policy(model, *, mesh=None, reshard_after_forward: bool = True):
    """Shard a transformers causal LM with FSDP2: one unit per decoder layer plus the root wrapper.

    Returns the :class:`FusedHeadPolicy` root; pass it to ``train_step`` / ``hidden_and_head``.
    """
    from torch.distributed.fsdp import fully_shard

    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"shard_policy: {type(model).__name__}.base_model has no .layers to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    root = FusedHeadPolicy(model)
    # The root keeps its parameters (embedding / LM head / final norm) unsharded after forward: the fused head
    # reads the head weight *after* the root's forward returns it, and backward needs it again anyway.
    fully_shard(root, mesh=mesh, reshard_after_forward=False)
    return root
