"""What a checkpoint must share with the run that resumes it, and what a resume after a non-finite stop may change.

* **The fingerprint** (:func:`run_fingerprint`, stored in every checkpoint's state): every config key that decides
  what is computed, the sha256 of the data / prompt files, and the *content* of the starting model (its config and
  weight files) and of the tokenizer -- not only their paths. :func:`check_resume` refuses a resume whose
  fingerprint differs, naming each key or file that changed.
* **After a non-finite stop** (:func:`diverged`): the message says what exists (the last good checkpoint, or none),
  ``<run>/diverged.json`` records the stop, and a ``--resume`` from that same checkpoint may change ``lr`` and
  ``max_grad_norm`` (the change is recorded in ``diverged.json`` and in ``config.yaml``).

Hashing reads every weight file once at each run start (its cost at real model sizes is not yet measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from inpo.train.checkpoint import CheckpointError, latest_checkpoint
from inpo.train.rundir import record_entry
from inpo.utils.io import atomic_write_json, read_utf8, sha256_file

__all__ = ["TrainingDiverged", "run_fingerprint", "check_resume", "diverged", "DIVERGED_FILE", "RESUME_FREE"]

# Keys a resumed run may change: where/how it runs and how far it goes, not what it computes.
RESUME_FREE = {"resume", "max_steps", "iterations", "progress", "threads", "output", "device", "checkpoint_every",
               "keep_checkpoints", "evaluate", "n_bootstrap", "gen_batch_size", "overwrite",
               "keep_iterates", "report_to", "logging_steps"}
# ... and after a non-finite stop, from the checkpoint that stop kept:
_AFTER_DIVERGENCE = ("lr", "max_grad_norm")
# File-valued keys whose content (not only their path) a resumed run must share.
_FINGERPRINT_FILES = ("data", "prompts", "eval_prompts")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "merges.txt")
DIVERGED_FILE = "diverged.json"


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm: the run stops at that step; the last good checkpoint is kept."""


def _folder_digest(folder, names: tuple, suffixes: tuple = ()) -> dict[str, str]:
    """sha256 of each file of ``folder`` named in ``names`` or ending in one of ``suffixes`` (top level only)."""
    if not folder or not Path(folder).is_dir():
        return {}
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and (p.name in names or p.suffix in suffixes))
    return {p.name: sha256_file(p) for p in files}


def run_fingerprint(cfg) -> dict:
    """The fingerprint of a run (see the module doc); stored in every checkpoint's state."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE}
    files = {}
    for key in _FINGERPRINT_FILES:
        value = getattr(cfg, key)
        if value and value != "default" and Path(value).is_file():
            files[key] = sha256_file(Path(value))
    tokenizer_dir = cfg.tokenizer or cfg.model
    return {"config": config, "files": files,
            "model": _folder_digest(cfg.model, _MODEL_FILES, _WEIGHT_SUFFIXES),
            "tokenizer": _folder_digest(tokenizer_dir, _TOKENIZER_FILES)}


def _config_changes(saved: dict, now: dict, allowed: tuple) -> tuple[list[str], dict]:
    changed, allowed_changes = [], {}
    for k, v in sorted(now.items()):
        if k in saved and saved[k] != v:
            if k in allowed:
                allowed_changes[k] = [saved[k], v]
            else:
                changed.append(f"{k}: {saved[k]!r} -> {v!r}")
    return changed, allowed_changes


def _digest_changes(what: str, where, saved: dict, now: dict) -> list[str]:
    out = []
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name), now.get(name)
        if a == b:
            continue
        how = "is gone" if b is None else "is new" if a is None else f"changed (sha256 {a[:12]} -> {b[:12]})"
        out.append(f"the {what} {str(where)!r}: {name} {how}")
    return out


def _fingerprint_changes(saved: dict, now: dict, cfg, allowed: tuple) -> tuple[list[str], dict]:
    changed, allowed_changes = _config_changes(saved.get("config", {}), now["config"], allowed)
    for key in sorted(set(saved.get("files", {})) | set(now["files"])):
        a, b = saved.get("files", {}).get(key), now["files"].get(key)
        if a != b:
            changed.append(f"the content of {key} file {now['config'].get(key)!r} "
                           f"(sha256 {str(a)[:12]} -> {str(b)[:12]})")
    for part, where in (("model", cfg.model), ("tokenizer", cfg.tokenizer or cfg.model)):
        if part in saved:  # checkpoints from before content fingerprints recorded paths only
            changed += _digest_changes(f"{part} folder", where, saved[part], now[part])
    return changed, allowed_changes


def _divergence_allowance(out: Path, ckpt_name: str) -> tuple:
    """The keys a resume from ``ckpt_name`` may change: lr and max_grad_norm when ``diverged.json`` says the run
    stopped on a non-finite step and kept that checkpoint as its last good one."""
    path = Path(out) / DIVERGED_FILE
    try:
        record = json.loads(read_utf8(path))
    except (OSError, ValueError):
        return ()
    return _AFTER_DIVERGENCE if isinstance(record, dict) and record.get("checkpoint") == ckpt_name else ()


def _record_resume(out: Path, ckpt_name: str, changes: dict) -> None:
    path = Path(out) / DIVERGED_FILE
    record = json.loads(read_utf8(path))
    record.setdefault("resumes", []).append({"checkpoint": ckpt_name, "changed": changes})
    atomic_write_json(path, record, indent=1)


def _check_legacy_config(cfg, out: Path) -> list[str]:
    """A checkpoint from before fingerprints: the saved config.yaml is all there is to compare."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.to_dict()
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(now) if k in saved and k not in RESUME_FREE
            and saved[k] != now[k]]


def check_resume(ckpt: dict, cfg, out, fingerprint: dict, *, warn=print, is_main: bool = True) -> None:
    """Refuse (ValueError naming every difference) a resume from ``ckpt`` by a run whose ``fingerprint`` differs
    from the one the checkpoint recorded; after a non-finite stop, a lower ``lr`` / ``max_grad_norm`` is allowed
    (and recorded)."""
    out, path = Path(out), ckpt["path"]
    saved = ckpt["state"].get("fingerprint")
    if saved is None:
        changed, allowed = _check_legacy_config(cfg, out), {}
    else:
        changed, allowed = _fingerprint_changes(saved, fingerprint, cfg, _divergence_allowance(out, path.name))
    if changed:
        raise ValueError(f"--resume: {path.name} was written with other settings, data or model "
                         f"({'; '.join(changed)}); resume with the same settings and files, or start a new run in "
                         f"another --output")
    if saved is not None and not {"model", "tokenizer"} <= set(saved):
        warn(f"[inpo] warning: {path.name} predates model fingerprints: the content of the model and tokenizer "
             f"folders cannot be checked against it")
    if allowed:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in allowed.items())
        warn(f"[inpo] resuming after the non-finite stop with {shown} (recorded in {out / DIVERGED_FILE})")
        if is_main:
            _record_resume(out, path.name, allowed)


def diverged(out, *, where: str, stats: dict, lr: float, is_main: bool = True) -> TrainingDiverged:
    """The error for a non-finite step ``where``: it says which checkpoint is kept (or that none exists yet) and
    what to run next; rank 0 records the stop in ``<out>/diverged.json`` (what lets ``--resume`` lower lr)."""
    try:
        kept = latest_checkpoint(out)
    except CheckpointError:
        kept = None
    name = kept.name if kept is not None else None
    if is_main:
        record = {"where": where, "loss": stats["loss"], "grad_norm": stats["grad_norm"], "lr": lr, "checkpoint": name}
        atomic_write_json(record_entry(out, DIVERGED_FILE), record, indent=1)
    head = (f"non-finite training {where}: loss {stats['loss']}, grad norm {stats['grad_norm']}, lr {stats['lr']:.3g}; "
            f"stopped without writing a checkpoint")
    if name is None:
        return TrainingDiverged(f"{head}. No checkpoint had been written yet, so there is nothing to resume: start "
                                f"again with a lower lr (e.g. --lr {lr / 10:.3g}; --overwrite replaces this run), or "
                                f"check the data")
    return TrainingDiverged(f"{head}. The last good checkpoint, {name}, is kept: continue from it with a lower "
                            f"learning rate, --resume --lr {lr / 10:.3g} (lr and max_grad_norm may change on this "
                            f"resume), or check the data")
