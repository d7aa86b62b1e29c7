"""The one rule for a phase's file: :func:`cached_phase`.

Everything an iteration produces is written atomically under ``<out>/iter_<t>/`` before it is used, so a crash loses
nothing already written and ``--resume`` reuses it: a phase whose file rank 0 sees is loaded on every rank, else it
is computed on every rank (it may be collective) and rank 0 writes its file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load_file, save

from inpo.online.shard import Shard
from inpo.utils.io import atomic_write_bytes, read_jsonl, write_jsonl

T = TypeVar("T")


def save_tensors(path: Path, tensors: dict) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict:
    return load_file(str(path))


@dataclass(frozen=True)
class Codec:
    """How a phase's value is read from and written to its file."""

    load: Callable[[Path], Any]
    save: Callable[[Path, Any], None]


JSONL = Codec(read_jsonl, write_jsonl)  # a list of records, one JSON line each
TENSORS = Codec(load_tensors, save_tensors)  # a dict of tensors (safetensors)


def cached_phase(path: Path, codec: Codec, compute: Callable[[], T], shard: Shard) -> T:
    """The phase's value: loaded from ``path`` when rank 0 sees that file (every rank loads it), else ``compute()``
    on every rank, written by rank 0 (atomically) before it is returned."""
    if shard.main_sees(path):
        return codec.load(path)
    value = compute()
    if shard.is_main:
        codec.save(path, value)
    return value
