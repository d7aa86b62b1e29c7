"""How much memory this machine has free, and the one check that a planned allocation fits in it.

Imports nothing from inpo.
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "check_fits", "MEMORY_FRACTION"]

MEMORY_FRACTION = 0.8  # a planned allocation may use at most this share of the memory available now


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else the physical memory), None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: int, what: str, hint: str) -> None:
    """ValueError ``"{what} needs about N GiB ... ; {hint}"`` when ``need`` bytes exceed :data:`MEMORY_FRACTION` of
    the memory available now (nothing is checked where that is unknown)."""
    have = available_memory()
    if have is not None and need > MEMORY_FRACTION * have:
        raise ValueError(f"{what} needs about {need / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of the "
                         f"{have / 2**30:.1f} GiB available; {hint}")
