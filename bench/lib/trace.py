"""A torch profiler trace (Chrome JSON, open in chrome://tracing or Perfetto) of one call, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.lib.timing import synchronize


def profile_to_chrome_trace(fn: Callable[[], object], path: str | os.PathLike, *, device=None, warmup: int = 1,
                            record_shapes: bool = True, profile_memory: bool = True, with_stack: bool = False) -> Path:
    """Run ``fn`` ``warmup`` times untraced, then once under ``torch.profiler`` (CPU + CUDA activities when a GPU is
    present) and write the Chrome trace to ``path`` (temp file + rename, so a crash leaves no half file).
    Returns the path."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"path must end in .json (Chrome trace format), got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    for _ in range(warmup):
        fn()
    synchronize(device)
    with profile(activities=activities, record_shapes=record_shapes, profile_memory=profile_memory,
                 with_stack=with_stack) as prof:
        fn()
        synchronize(device)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp.json", dir=path.parent)
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
