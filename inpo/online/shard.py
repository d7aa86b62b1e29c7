"""This process's share of a run: ``Shard(rank, world)``. One process is a world of one, where every method is the
identity, so the single-process path and the torchrun path are one code path.

Under torchrun (W > 1) an iteration's prompts are split into W contiguous blocks; rank r samples and ranks its block
with seeds offset by ``1_000_003 · r`` and the blocks are gathered in rank (= prompt) order, so every rank holds the
same data. The samples therefore differ from a single-process run (other RNG streams, smaller generation batches),
but a run is deterministic for a given seed and W. Whatever only one rank may decide (does a phase's file exist?
what did the evaluation give?) is decided by rank 0 and broadcast, so that all ranks take the same path through the
collectives.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

from inpo.utils.dist import rank_world

T = TypeVar("T")

RANK_SEED_STRIDE = 1_000_003  # rank r's sampling / selection seed = the single-process seed + r * stride


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` processes (``Shard()``: one process)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """This process's shard (``Shard(0, 1)`` without torchrun)."""
        return cls(*rank_world())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def block(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (the first ``len(items) % world`` ranks take one more)."""
        base, extra = divmod(len(items), self.world)
        lo = self.rank * base + min(self.rank, extra)
        return items[lo:lo + base + (1 if self.rank < extra else 0)]

    def seed(self, base: int) -> int:
        """This rank's seed for a draw whose single-process seed is ``base`` (rank 0 keeps ``base``)."""
        return base + RANK_SEED_STRIDE * self.rank

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (collective)."""
        if self.world == 1:
            return [obj]
        parts: list = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (collective)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_sees(self, path: Path) -> bool:
        """Whether ``path`` is a file as rank 0 sees it: the ranks must agree on which phases to skip, since some
        of them (sampling and gathering, precomputing with a sharded model) are collective."""
        return bool(self.from_main(Path(path).is_file()))

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0, its result returned on every rank. An exception on rank 0 is raised on every
        rank (the same exception: nobody is left waiting in a collective, and every rank reports the same
        error); an exception that cannot be sent is raised as a RuntimeError naming it."""
        if self.world == 1:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as exc:  # noqa: BLE001 - sent to every rank below
                outcome = (False, exc)
            outcome = _sendable(outcome)
        try:
            ok, value = self.from_main(outcome)
        except Exception as exc:  # noqa: BLE001 - rank 0's exception did not unpickle here
            raise RuntimeError(f"rank 0 failed; its error could not be rebuilt on rank {self.rank} ({exc})") from None
        if not ok:
            raise value
        return value


def _sendable(outcome: tuple[bool, object]) -> tuple[bool, object]:
    """``outcome`` if it pickles (a broadcast must not fail on the sender alone: the others would wait forever),
    else a RuntimeError that names it."""
    try:
        pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - any pickling failure
        ok, value = outcome
        what = f"{type(value).__name__}: {value}" if not ok else f"its result ({type(value).__name__})"
        return False, RuntimeError(f"rank 0 could not send {what}")
    return outcome
