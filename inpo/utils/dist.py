"""This process's rank and the world size: the one place that asks ``torch.distributed``.

Without ``torchrun`` (no initialised process group) a process is rank 0 of a world of 1, so callers never branch
on "distributed or not" just to get these numbers.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["get_rank", "get_world_size", "rank_world", "is_distributed", "is_main"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    """The number of ranks (1 without an initialised process group)."""
    return dist.get_world_size() if _initialized() else 1


def rank_world() -> tuple[int, int]:
    """``(get_rank(), get_world_size())``."""
    return get_rank(), get_world_size()


def is_distributed() -> bool:
    """More than one rank: collectives are needed (a world of 1 skips them)."""
    return get_world_size() > 1


def is_main() -> bool:
    """Rank 0: the process that writes shared files and prints."""
    return get_rank() == 0
