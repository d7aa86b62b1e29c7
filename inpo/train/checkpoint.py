"""Crash-safe checkpoints: model + optimizer (safetensors), scheduler, RNG and data position.

Layout under ``<run>/checkpoints/``::

    ckpt-000012/  model.safetensors  config.json  tokenizer files  optimizer.safetensors  [aux.safetensors]
                  rng.safetensors  state.json
    latest        (text: the name of the newest complete checkpoint)

Each checkpoint is also a model folder: ``model.safetensors`` holds the policy under transformers' own key names
(the FSDP root wrapper's ``model.`` prefix is stripped; ``state.json`` records it for resume) beside its
``config.json`` and the run's tokenizer, so ``AutoModelForCausalLM.from_pretrained(ckpt)`` loads π at that step.

A checkpoint is written into a temporary directory, every file fsynced, then published with one
``os.replace`` and only then named in ``latest`` (itself replaced atomically): a crash at any point leaves
the previous checkpoint intact and ``latest`` pointing at a complete one. State dicts go through
``torch.distributed.checkpoint.state_dict`` with full (unsharded) tensors, so the same files serve a
single process and FSDP2; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from inpo.train.model import FusedHeadPolicy, unwrap
from inpo.utils.dist import get_rank, get_world_size, is_distributed

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "restore_training_state", "atomic_write_text",
           "atomic_write_bytes", "CheckpointError", "load_latest_good_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read (truncated, corrupt or from an incompatible run)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems / platforms do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``path`` via ``path.tmp`` + fsync + ``os.replace``: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# -- state dicts --------------------------------------------------------------------------------------------

def _full_state(model, optimizer=None):
    """Full (unsharded, CPU) model and FQN-keyed optimizer state dicts -- plain modules and FSDP2 alike."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def _flatten_optimizer(osd: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{fqn}\x1f{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}\x1f{k}"] = v
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        fqn, k = key.split("\x1f")
        state.setdefault(fqn, {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]]}


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    if "python" in meta:
        v, st, g = meta["python"]
        random.setstate((v, tuple(st), g))


# -- integrity -------------------------------------------------------------------------------------------------

def _sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _first_non_finite(*state_dicts: dict) -> str | None:
    """The name of the first floating tensor holding a NaN/inf, or None when every one is finite."""
    for sd in state_dicts:
        for k, v in sd.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return k
    return None


# -- save / load --------------------------------------------------------------------------------------------

def _key_prefix(model) -> str:
    """The prefix the FSDP root wrapper adds to transformers' key names ('' for a plain model)."""

    return "model." if isinstance(model, FusedHeadPolicy) else ""


def _hf_tensors(sd: dict, prefix: str) -> dict:
    # Tied weights share storage, which safetensors refuses; a clone per entry keeps every key loadable.
    return {k.removeprefix(prefix): v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def _write_model_files(path: Path, model, tokenizer) -> None:
    """config.json (+ generation_config.json) and the tokenizer beside model.safetensors: a loadable model folder."""

    inner = unwrap(model)
    if getattr(inner, "config", None) is not None:
        inner.config.save_pretrained(str(path))
    if getattr(inner, "generation_config", None) is not None:
        inner.generation_config.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def save_checkpoint(run_dir, *, model, optimizer=None, scheduler=None, state: dict, extra_models: dict | None = None,
                    keep: int = 2, tokenizer=None) -> Path | None:
    """Write a checkpoint of ``model`` (+ optimizer/scheduler/RNG/``state``) and point ``latest`` at it.

    ``state`` is the data position (iteration, phase, step...) as JSON-able data. ``extra_models`` maps a name
    to another model to store beside (e.g. ONPO's auxiliary chain π'). Collective under FSDP (every rank must
    call it); rank 0 writes. Returns the checkpoint directory (None on other ranks). Keeps the newest ``keep``.
    The directory is also a transformers model folder of ``model`` (config.json, ``tokenizer`` when given).
    """
    msd, osd = _full_state(model, optimizer)
    extras = {name: _full_state(m)[0] for name, m in (extra_models or {}).items()}
    bad = _first_non_finite(msd, *extras.values()) if get_rank() == 0 else None
    if is_distributed():
        box = [bad]
        dist.broadcast_object_list(box, src=0)  # every rank refuses together (no rank left in a collective)
        bad = box[0]
    if bad is not None:
        where = ", ".join(f"{k} {state[k]}" for k in ("iteration", "phase", "global_step") if k in state)
        raise CheckpointError(f"refusing to write a checkpoint ({where}): weight {bad!r} is not finite (NaN/inf); "
                              f"the previous checkpoints are kept")
    if get_rank() != 0:
        return None
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{int(state.get('global_step', 0)):06d}-i{int(state.get('iteration', 0))}-{state.get('phase', 'x')}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + name, dir=root))
    prefixes = {"model": _key_prefix(model), **{n: _key_prefix(m) for n, m in (extra_models or {}).items()}}
    save_file(_hf_tensors(msd, prefixes["model"]), tmp / "model.safetensors", metadata={"format": "pt"})
    for ename, esd in extras.items():
        save_file(_hf_tensors(esd, prefixes[ename]), tmp / f"{ename}.safetensors")
    _write_model_files(tmp, model, tokenizer)
    # The world size is part of the data position: it decides each rank's share of a step and of the prompts.
    meta = {"state": state, "extra_models": sorted(extras), "format": 1, "world_size": get_world_size(),
            "key_prefix": prefixes}
    if osd is not None:
        otensors, ometa = _flatten_optimizer(osd)
        save_file(otensors, tmp / "optimizer.safetensors")
        meta["optimizer"] = ometa
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    rng_t, meta["rng"] = _rng_state()
    save_file(rng_t, tmp / "rng.safetensors")
    meta["checksums"] = {f.name: _sha256_file(f) for f in sorted(tmp.iterdir()) if f.suffix == ".safetensors"}
    meta = json.loads(json.dumps(meta, default=float))  # the JSON form, so that the digest below reads back equal
    meta["meta_sha256"] = _meta_digest(meta)
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        _fsync_file(f)
    final = root / name
    if final.exists():  # the same step written again (e.g. a resumed run re-reaching it): replace
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
    for old in ckpts[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crash mid-write
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer} names {path.name!r} but {path} is missing or incomplete (no state.json)")
    return path


def load_latest_good_checkpoint(run_dir, warn=print) -> dict | None:
    """The newest checkpoint of a run that loads and verifies: ``latest`` first, then the older ones, newest
    first, each failure reported through ``warn``. None when the run has no checkpoint; CheckpointError when
    none of them is readable."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    named = pointer.read_text(errors="replace").strip()
    others = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt-") and p.name != named),
                    reverse=True)
    candidates = ([root / named] if named else []) + others
    problems = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as exc:
            problems.append(f"{path.name}: {exc}")
            warn(f"[inpo] warning: checkpoint {path.name} is unusable ({exc}); trying the previous one")
            continue
        return ckpt
    raise CheckpointError(f"no usable checkpoint under {root}: " + "; ".join(problems))


def load_checkpoint(path) -> dict:
    """Read a checkpoint directory → dict(state, model, optimizer, scheduler, rng, extra_models, world_size), all on
    CPU (``world_size`` is that of the run that wrote it; 1 for checkpoints older than the field).

    Raises FileNotFoundError when it does not exist and :class:`CheckpointError` naming the file when a part
    is truncated or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")

    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {str(path / 'state.json')!r} is missing or corrupt ({exc})") from exc
    if not isinstance(meta, dict) or ("meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta)):
        raise CheckpointError(f"checkpoint file {str(path / 'state.json')!r} is corrupt (checksum mismatch)")
    sums = meta.get("checksums", {})  # absent in checkpoints written before checksums existed

    def read(fname):
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing")
        if fname in sums and _sha256_file(f) != sums[fname]:
            raise CheckpointError(f"checkpoint file {str(f)!r} is corrupt or truncated: its sha256 differs from the "
                                  f"one recorded when it was written")
        try:
            return load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint file {str(f)!r} is corrupt or truncated ({exc})") from exc

    out = {"state": meta["state"], "model": read("model.safetensors"), "scheduler": meta.get("scheduler"),
           "rng": (read("rng.safetensors"), meta.get("rng", {})), "path": path,
           "extra_models": {n: read(f"{n}.safetensors") for n in meta.get("extra_models", [])},
           "world_size": int(meta.get("world_size", 1))}
    for name, prefix in meta.get("key_prefix", {}).items():  # back to the (wrapped) training model's key names
        sd = out["model"] if name == "model" else out["extra_models"].get(name)
        if prefix and sd is not None:
            tensors = {prefix + k: v for k, v in sd.items()}
            sd.clear()
            sd.update(tensors)
    out["optimizer"] = (_unflatten_optimizer(read("optimizer.safetensors"), meta["optimizer"])
                        if "optimizer" in meta else None)
    return out


def load_model_weights(model, tensors: dict) -> None:
    """Load a full state dict into a plain or FSDP2-sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=True))


def restore_training_state(ckpt: dict, *, model, optimizer=None, scheduler=None) -> dict:
    """Put a loaded checkpoint back into live objects (model, optimizer, scheduler, RNG); returns its ``state``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=True)
    if optimizer is not None and ckpt["optimizer"] is not None:
        set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=opts)
    else:
        load_model_weights(model, ckpt["model"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(*ckpt["rng"])
    return ckpt["state"]
