"""Records and the environment they came from: every metrics / result / benchmark record carries where and with
what it was measured (device, driver, versions, commit); ``append_jsonl`` writes them a whole line at a time."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the working tree (``+dirty`` when it has uncommitted changes), or ``unknown``.

    ``INPO_COMMIT`` (when set and non-empty) wins: the GPU device machine gets a copy of the working tree
    without ``.git``, so ``bench/device/run.sh`` passes the commit recorded on the machine that sent it."""
    env = os.environ.get("INPO_COMMIT", "").strip()
    if env:
        return env
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device=None) -> str:
    """GPU name (e.g. ``NVIDIA H100 80GB HBM3``) or ``cpu-<processor>-<n>c``. ``device``: the device the
    measurement ran on (default: CUDA when available) -- a CPU run on a GPU machine is labelled as CPU."""
    import torch

    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{os.cpu_count()}c"


def device_slug(name: str | None = None) -> str:
    """File-name-safe short device name: ``h100``, ``h200``, ``a100``, ``cpu``..."""
    name = (name or device_name()).lower()
    if name.startswith("cpu"):
        return "cpu"
    for key in ("h200", "h100", "a100", "l40s", "a10g", "l4", "b200", "gh200"):
        if key in name:
            return key
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _driver() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML on CPU machines: NVMLError_LibraryNotFound, ImportError, ...
        return None


def environment_info(device=None) -> dict:
    """Keys every result record carries (``device``: what the measurement ran on, default CUDA when available)."""
    import torch

    info = {
        "device": device_name(device),
        "driver": _driver(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
    }
    for mod in ("triton", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    return info


def append_jsonl(path: str | os.PathLike, records: list[dict] | dict) -> Path:
    """Append records as JSON lines; one write + fsync so a crash never leaves half a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(records, dict):
        records = [records]
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path
