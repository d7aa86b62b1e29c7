"""Crash-safe checkpoints: model + optimizer (safetensors), scheduler, RNG and data position.

Layout under ``<run>/checkpoints/``::

    ckpt-000012/  model.safetensors  config.json  tokenizer files  optimizer.safetensors  [aux.safetensors]
                  rng.safetensors  state.json
    latest        (text: the name of the newest complete checkpoint)

Each checkpoint is also a model folder: ``model.safetensors`` holds the policy under transformers' own key names
(the FSDP root wrapper's ``model.`` prefix is stripped; ``state.json`` records it for resume) beside its
``config.json`` and the run's tokenizer, so ``AutoModelForCausalLM.from_pretrained(ckpt)`` loads π at that step.

A checkpoint is written by the one model-folder writer (:func:`inpo.utils.model_folder.write_model_folder`: no
NaN/inf weight, room on the disk, a temporary directory, every file fsynced, one ``os.replace``) and only then named
in ``latest`` (itself replaced atomically): a crash, a full disk or Ctrl-C at any point leaves the previous
checkpoint intact and ``latest`` pointing at a complete one. ``state.json`` records every file's sha256 and its own;
a checkpoint without them cannot be verified and is not trusted (resume falls back to the previous one). A lost
``latest`` is not a lost run: the newest checkpoint folder that verifies is used. State dicts go through
``torch.distributed.checkpoint.state_dict`` with full (unsharded) tensors, so the same files serve a
single process and FSDP2; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from inpo.train.model import FusedHeadPolicy, unwrap
from inpo.train.rundir import record_entry
from inpo.utils.dist import get_rank, get_world_size, is_distributed
from inpo.utils.io import DiskFullError, atomic_write_text, sha256_file
from inpo.utils.model_folder import NonFiniteWeights, first_non_finite, tensor_bytes, write_model_folder

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "restore_training_state", "CheckpointError",
           "load_latest_good_checkpoint", "list_checkpoints"]


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read (truncated, corrupt or from an incompatible run)."""


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

def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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


def _agree_finite(msd: dict, extras: dict, state: dict) -> None:
    """The NaN guard, agreed by every rank under FSDP (rank 0 checks the full tensors and broadcasts), so that all
    ranks refuse together and none is left waiting in a collective."""
    if not is_distributed():
        return
    box = [first_non_finite(msd, *extras.values()) if get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise _refused(state, f"weight {box[0]!r} is not finite (NaN/inf)")


def _refused(state: dict, why: str) -> CheckpointError:
    where = ", ".join(f"{k} {state[k]}" for k in ("iteration", "phase", "global_step") if k in state)
    return CheckpointError(f"refusing to write a checkpoint ({where}): {why}; the previous checkpoints are kept")


def _checkpoint_name(state: dict) -> str:
    return f"ckpt-{int(state.get('global_step', 0)):06d}-i{int(state.get('iteration', 0))}-{state.get('phase', 'x')}"


def save_checkpoint(run_dir, *, model, optimizer=None, scheduler=None, state: dict, extra_models: dict | None = None,
                    keep: int = 2, tokenizer=None) -> Path | None:
    """Write a checkpoint of ``model`` (+ optimizer/scheduler/RNG/``state``) and point ``latest`` at it.

    ``state`` is the data position (iteration, phase, step...) as JSON-able data. ``extra_models`` maps a name
    to another model to store beside (e.g. ONPO's auxiliary chain π'). Collective under FSDP (every rank must
    call it); rank 0 writes, through the one model-folder writer (NaN guard, free space, atomic publish).
    Returns the checkpoint directory (None on other ranks). Keeps the newest ``keep``.
    The directory is also a transformers model folder of ``model`` (config.json, ``tokenizer`` when given).
    """
    msd, osd = _full_state(model, optimizer)
    extras = {name: _full_state(m)[0] for name, m in (extra_models or {}).items()}
    _agree_finite(msd, extras, state)
    if get_rank() != 0:
        return None
    root = record_entry(run_dir, "checkpoints")  # in the run's manifest (a claimed run directory) before writing
    name = _checkpoint_name(state)
    prefixes = {"model": _key_prefix(model), **{n: _key_prefix(m) for n, m in (extra_models or {}).items()}}
    otensors, ometa = _flatten_optimizer(osd) if osd is not None else ({}, None)

    def write(tmp: Path) -> None:
        save_file(_hf_tensors(msd, prefixes["model"]), tmp / "model.safetensors", metadata={"format": "pt"})
        for ename, esd in extras.items():
            save_file(_hf_tensors(esd, prefixes[ename]), tmp / f"{ename}.safetensors")
        _write_model_files(tmp, model, tokenizer)
        if ometa is not None:
            save_file(otensors, tmp / "optimizer.safetensors")
        _write_state(tmp, state, extras, prefixes, ometa, scheduler)

    try:
        final = write_model_folder(root / name, write, tensors=[msd, *extras.values()],
                                   need_bytes=tensor_bytes(msd, *extras.values(), otensors),
                                   what=f"checkpoint {name}")
    except NonFiniteWeights as exc:
        raise _refused(state, f"weight {exc.weight!r} is not finite (NaN/inf)") from None
    except DiskFullError as exc:
        raise DiskFullError(exc.errno, f"{exc}; {_what_is_kept(run_dir)}") from None
    atomic_write_text(root / "latest", name + "\n")
    _rotate(root, keep, name)
    return final


def _what_is_kept(run_dir) -> str:
    try:
        previous = latest_checkpoint(run_dir)
    except CheckpointError:
        previous = None
    if previous is None:
        return "no earlier checkpoint exists"
    return f"the previous checkpoint, {previous.name}, is intact: --resume continues from it"


def _write_state(tmp: Path, state: dict, extras: dict, prefixes: dict, ometa, scheduler) -> None:
    """rng.safetensors and state.json (the data position, scheduler, RNG and every file's sha256)."""
    # The world size is part of the data position: it decides each rank's share of a step and of the prompts.
    meta = {"state": state, "extra_models": sorted(extras), "format": 1, "world_size": get_world_size(),
            "key_prefix": prefixes}
    if ometa is not None:
        meta["optimizer"] = ometa
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    rng_t, meta["rng"] = _rng_state()
    save_file(rng_t, tmp / "rng.safetensors")
    meta["checksums"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.suffix == ".safetensors"}
    meta = json.loads(json.dumps(meta, default=float))  # the JSON form, so that the digest below reads back equal
    meta["meta_sha256"] = _meta_digest(meta)
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def _rotate(root: Path, keep: int, newest: str) -> None:
    """Keep the newest ``keep`` checkpoints (never ``newest``) and drop the leftovers of a crash mid-write."""
    for old in list_checkpoints(root.parent)[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in [*root.glob(".tmp-*"), *root.glob(".ckpt-*.tmp"), *root.glob(".ckpt-*.old")]:
        shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoint folders (complete or not), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none: the one ``latest`` names, else (the
    pointer lost) the newest folder holding a state.json."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        complete = [p for p in list_checkpoints(run_dir) if (p / "state.json").is_file()]
        return complete[-1] if complete else None
    path = root / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer} names {path.name!r} but {path} is missing or incomplete (no state.json)")
    return path


def load_latest_good_checkpoint(run_dir, warn=print) -> dict | None:
    """The newest checkpoint of a run that loads and verifies: the one ``latest`` names first, then every other
    checkpoint folder, newest first (also when ``latest`` itself is lost), each failure reported through ``warn``.
    None when the run has no checkpoint folder; CheckpointError when none of them is usable."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    others = [p for p in reversed(list_checkpoints(run_dir)) if p.name != named]
    if not named and not others:
        return None
    if not named:
        warn(f"[inpo] warning: {pointer} is missing; looking for the newest usable checkpoint among "
             f"{len(others)} folder(s)")
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


def _read_meta(path: Path) -> dict:
    """state.json, verified: its own digest and the checksums of every file (a checkpoint without them cannot be
    verified and is not trusted)."""
    f = path / "state.json"
    try:
        meta = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {str(f)!r} is missing or corrupt ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint file {str(f)!r} is corrupt (not a JSON object)")
    if "meta_sha256" not in meta or not isinstance(meta.get("checksums"), dict):
        raise CheckpointError(f"checkpoint file {str(f)!r} has no checksums: its files cannot be verified, so it is "
                              f"not trusted")
    if meta["meta_sha256"] != _meta_digest(meta):
        raise CheckpointError(f"checkpoint file {str(f)!r} is corrupt (checksum mismatch)")
    return meta


def load_checkpoint(path) -> dict:
    """Read a checkpoint directory → dict(state, model, optimizer, scheduler, rng, extra_models, world_size), all on
    CPU (``world_size`` is that of the run that wrote it).

    Raises FileNotFoundError when it does not exist and :class:`CheckpointError` naming the file when a part
    is truncated, corrupt or cannot be verified (no checksum recorded for it)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    meta = _read_meta(path)
    sums = meta["checksums"]

    def read(fname):
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing")
        if fname not in sums:
            raise CheckpointError(f"checkpoint file {str(f)!r} has no recorded checksum: it cannot be verified, so "
                                  f"it is not trusted")
        if sha256_file(f) != sums[fname]:
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


def restore_training_state(ckpt: dict, *, model, optimizer=None, scheduler=None, lr: float | None = None) -> dict:
    """Put a loaded checkpoint back into live objects (model, optimizer, scheduler, RNG); returns its ``state``.

    ``lr``: the run's peak learning rate, when a resume may change it (after a non-finite stop): the schedule
    keeps its position and shape, scaled to the new peak."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=True)
    if optimizer is not None and ckpt["optimizer"] is not None:
        set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=opts)
    else:
        load_model_weights(model, ckpt["model"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
        if lr is not None and optimizer is not None:
            _rescale_lr(optimizer, scheduler, lr)
    _set_rng_state(*ckpt["rng"])
    return ckpt["state"]


def _rescale_lr(optimizer, scheduler, lr: float) -> None:
    """A restored schedule continued at peak ``lr`` instead of the checkpoint's (no-op when they are equal)."""
    for i, (group, base) in enumerate(zip(optimizer.param_groups, scheduler.base_lrs)):
        if base != lr and base > 0:
            group["lr"] = group["lr"] / base * lr
            group["initial_lr"] = lr
            scheduler.base_lrs[i] = lr
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
