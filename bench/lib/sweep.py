"""The OOM sweep: double the micro-batch size until the device runs out of memory; report the largest that fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.lib.timing import is_oom, release_memory


@dataclass
class SweepResult:
    """``max_fit``: largest size that ran (None if even ``start`` failed); ``oom_at``: first size that ran out of
    memory (None if the sweep stopped at ``limit`` first); ``points``: (size, measurement dict) of every size that
    ran, in order."""

    max_fit: int | None
    oom_at: int | None
    limit: int
    points: list[tuple[int, dict]] = field(default_factory=list)

    @property
    def oom_reached(self) -> bool:
        return self.oom_at is not None


def oom_sweep(try_size: Callable[[int], dict], *, start: int, limit: int, factor: int = 2,
              device=None, on_point: Callable[[int, dict], None] | None = None) -> SweepResult:
    """Call ``try_size(size)`` for size = start, start·factor, ... up to ``limit`` until it raises a device OOM.

    Only out-of-memory errors end the sweep quietly; any other exception propagates (a bug must not be recorded
    as a capacity limit). After an OOM the allocator cache is emptied so later benches start clean.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    if limit < start:
        raise ValueError(f"limit must be >= start ({start}), got {limit}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2 so the sweep ends, got {factor}")
    result = SweepResult(max_fit=None, oom_at=None, limit=limit)
    size = start
    while size <= limit:
        oom = False
        try:
            point = try_size(size)
        except Exception as exc:
            if not is_oom(exc):
                raise
            oom = True
        if oom:
            # Only here, after the except block, is the exception (and the traceback whose frames pin the failed
            # step's model, optimiser and activations) gone: inside it, gc + empty_cache could free nothing.
            release_memory(device)
            result.oom_at = size
            return result
        result.max_fit = size
        result.points.append((size, point))
        if on_point is not None:
            on_point(size, point)
        size *= factor
    return result
