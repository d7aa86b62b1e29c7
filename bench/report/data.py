"""The report's data: every ``*.jsonl`` under the results folder, by family, and the latest record per key.

Unreadable files and malformed lines are counted and reported, never fatal.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HEAD_KEY = ("device", "impl", "N", "H", "V", "dtype", "inputs")
STEP_KEY = ("device", "system", "model", "seq_len")
SWEEP_KEY = ("device", "system", "model", "seq_len", "micro_batch_tokens")
ITER_KEY = ("device", "algorithm", "model")
GEN_KEY = ("device", "sampler", "model", "smoke")
PHASES = ("generate", "rank", "precompute", "train")


@dataclass
class Results:
    """Records by family (``head``, ``head-cpu``, ``step``, ``iteration``, ``generation``, ``other``) and problems
    seen loading."""

    families: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def family(self, name: str) -> list[dict]:
        return self.families.get(name, [])


def family_of(path: Path) -> str:
    stem = path.stem
    if stem == "head-cpu":
        return "head-cpu"
    for fam in ("head", "step", "iteration", "generation"):
        if stem.startswith(fam + "-") or stem == fam:
            return fam
    return "other"


def _read_records(path: Path) -> tuple[list[dict], str | None]:
    """(records, problem) of one JSONL file: ``problem`` names an unreadable file or counts malformed lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"{path.name}: unreadable ({type(exc).__name__}: {exc})"
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            records.append(_normalise(rec))
        else:
            bad += 1
    return records, (f"{path.name}: skipped {bad} malformed line(s)" if bad else None)


def load_results(results_dir: str | os.PathLike) -> Results:
    """Read every ``*.jsonl`` directly under ``results_dir`` (a missing folder is an empty result)."""
    res = Results()
    root = Path(results_dir)
    if not root.is_dir():
        res.problems.append(f"results folder {str(root)!r} does not exist")
        return res
    for path in sorted(root.glob("*.jsonl")):
        res.files.append(path)
        records, problem = _read_records(path)
        res.families[family_of(path)].extend(records)
        if problem:
            res.problems.append(problem)
    return res


def _normalise(rec: dict) -> dict:
    """Head benches name the shape ``N/H/V`` (GPU) or ``n/h/v`` (CPU): the report reads the upper-case keys."""
    for k in ("N", "H", "V"):
        if k not in rec and k.lower() in rec:
            rec[k] = rec[k.lower()]
    return rec


def is_gpu(rec: dict) -> bool:
    dev = str(rec.get("device") or "")
    return bool(dev) and not dev.lower().startswith("cpu")


def latest(records: Iterable[dict], key: tuple[str, ...]) -> list[dict]:
    """The newest record (ISO ``date``, later lines win ties) per key, in first-seen key order."""
    best: dict[tuple, dict] = {}
    for rec in records:
        k = tuple(_hashable(rec.get(f)) for f in key)
        if k not in best or str(rec.get("date") or "") >= str(best[k].get("date") or ""):
            best[k] = rec
    return list(best.values())


def _hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def head_cpu_records(recs: list[dict]) -> list[dict]:
    """The head-cpu records that count: those with a FLOP floor (``floor_kind``) when any exist. Older runs called
    four materialised ATen GEMMs the floor (impl ``gemm-floor``), which the native head beats, so they are dropped
    once a run with the measured-peak floor exists."""
    new = [r for r in recs if r.get("floor_kind")]
    return new or list(recs)


def head_family(res: Results, fam: str) -> list[dict]:
    """``head`` records, or the ``head-cpu`` records that count (:func:`head_cpu_records`)."""
    recs = res.family(fam)
    return head_cpu_records(recs) if fam == "head-cpu" else recs


def step_rows(steps: list[dict]) -> list[dict]:
    """Latest main step records (``kind`` ``step``, the default) per :data:`STEP_KEY`."""
    return latest([r for r in steps if r.get("kind", "step") == "step"], STEP_KEY)


def cpu_compare_rows(steps: list[dict]) -> list[dict]:
    """Latest interleaved CPU step-comparison records (``kind="cpu-compare"``), full runs first, smoke after."""
    rows = latest([r for r in steps if r.get("kind") == "cpu-compare"], STEP_KEY + ("smoke",))
    return sorted(rows, key=lambda r: bool(r.get("smoke")))
