"""Measurement helpers: environment records, result files, timers (GPU extras behind optional imports)."""

from inpo.profiling.record import append_jsonl, environment_info

__all__ = ["append_jsonl", "environment_info"]
