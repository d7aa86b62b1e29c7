"""The one model-folder writer: checkpoints, the final policy, iterates, the vLLM sampler's weight sync and the
default-policy cache all publish a folder through :func:`write_model_folder`, behind the one NaN guard.

A folder is written into a temporary sibling, every file fsynced, then published with ``os.replace`` (an existing
folder of that name is swapped out, or -- ``replace=False`` -- kept). So a reader sees the old folder or the new
one, never half of one, and a write that fails (a full disk, Ctrl-C) removes its temporary folder and leaves the
old one. Before anything is written: no weight may hold a NaN/inf (:class:`NonFiniteWeights`), and the filesystem
must have room for the tensors (:class:`~inpo.utils.io.DiskFullError`).

Imports nothing from inpo but :mod:`inpo.utils.io`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from inpo.utils.io import as_disk_full, check_free_space, fsync_dir

__all__ = ["NonFiniteWeights", "first_non_finite", "check_finite", "write_model_folder", "save_model",
           "publish_dir", "tensor_bytes"]


class NonFiniteWeights(ValueError):
    """A weight holds NaN/inf: the folder is not written (the previous one, if any, is kept)."""

    def __init__(self, message: str, weight: str):
        super().__init__(message)
        self.weight = weight


def first_non_finite(*state_dicts: Mapping) -> str | None:
    """The name of the first floating tensor holding a NaN/inf, or None when every one is finite (the NaN guard)."""
    for sd in state_dicts:
        for name, t in sd.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    return None


def check_finite(what: str, *state_dicts: Mapping) -> None:
    """Raise :class:`NonFiniteWeights` naming ``what`` and the weight when a tensor holds NaN/inf."""
    bad = first_non_finite(*state_dicts)
    if bad is not None:
        raise NonFiniteWeights(f"refusing to write {what}: weight {bad!r} is not finite (NaN/inf); what was written "
                               f"before is kept", bad)


def tensor_bytes(*state_dicts: Mapping) -> int:
    return sum(t.numel() * t.element_size() for sd in state_dicts for t in sd.values() if isinstance(t, torch.Tensor))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(dirpath)


def publish_dir(tmp: Path, dest: Path, *, replace: bool = True) -> Path:
    """Move the complete folder ``tmp`` to ``dest`` (same filesystem). An existing ``dest`` is swapped out and
    removed (``replace``) or kept, ``tmp`` then discarded (``replace=False``: e.g. a cache another process filled)."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return dest
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def write_model_folder(dest, write: Callable[[Path], None], *, tensors: Iterable[Mapping] = (),
                       need_bytes: int | None = None, replace: bool = True, what: str | None = None) -> Path:
    """Publish the folder ``dest`` whose files ``write(tmp)`` creates in a temporary folder beside it.

    ``tensors``: the state dicts the folder holds -- checked for NaN/inf before anything is written, and their size
    (or ``need_bytes``) checked against the free space. A failure of ``write`` removes the temporary folder (a full
    disk or a file-size limit raises :class:`~inpo.utils.io.DiskFullError` naming the path and the size)."""
    dest = Path(dest)
    what = what or f"model folder {str(dest)!r}"
    tensors = list(tensors)
    check_finite(what, *tensors)
    need = tensor_bytes(*tensors) if need_bytes is None else need_bytes
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(dest.parent, need, f"writing {what} into")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a published folder gets what mkdir would give
        write(tmp)
        _fsync_tree(tmp)
        return publish_dir(tmp, dest, replace=replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = as_disk_full(exc, dest, need)
        if full is not None:
            raise full from None
        raise


def save_model(model, dest, tokenizer=None, *, files: Mapping[str, str] | None = None, replace: bool = True) -> Path:
    """A transformers model (``save_pretrained``, safetensors) + its tokenizer + small text ``files`` as the
    model folder ``dest``, through :func:`write_model_folder` (NaN guard, free space, atomic publish)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return write_model_folder(dest, write, tensors=[model.state_dict()], replace=replace)
