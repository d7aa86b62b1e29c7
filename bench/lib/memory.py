"""Peak resident memory of a CPU process from the kernel's own counters (Linux ``/proc/self``)."""

from __future__ import annotations


def status_kb(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_extra_rss(fn) -> int | None:
    """Peak RSS (bytes) reached during ``fn()`` above the RSS just before it; None without /proc support."""
    before = status_kb("VmRSS")
    if before is None or not reset_peak_rss():
        return None
    fn()
    peak = status_kb("VmHWM")
    return None if peak is None else max(0, peak - before) * 1024
