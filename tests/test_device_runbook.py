"""The GPU-session runbook (bench/device/): shell syntax, stage validation, the CPU smoke path end to end, and the
INPO_COMMIT override the device machine needs (its copy of the tree has no .git)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inpo.utils import record

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "device" / "run.sh"
FETCH = ROOT / "bench" / "device" / "fetch_wheels.sh"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(OUT=str(tmp_path / "out"), INPO_PYTHON=sys.executable, INPO_DEVICE_SKIP_INSTALL="1",
               INPO_COMMIT="test-commit", TMPDIR=str(tmp_path), **extra)
    return env


@needs_bash
@pytest.mark.parametrize("script", [RUN, FETCH], ids=lambda p: p.name)
def test_scripts_parse(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@needs_bash
def test_unknown_stage_fails_naming_it(tmp_path):
    res = subprocess.run(["bash", str(RUN), "setup", "no-such-stage"], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "no-such-stage" in res.stderr
    assert not (tmp_path / "out").exists(), "stages are validated before anything runs"


@needs_bash
def test_no_stage_is_usage_error(tmp_path):
    res = subprocess.run(["bash", str(RUN)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr


def _records(path: Path) -> list[dict]:
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    assert lines, f"{path.name} is empty"
    return [json.loads(x) for x in lines]


@needs_bash
def test_smoke_stage_writes_records(tmp_path):
    """`run.sh smoke` on CPU: the three benches' --smoke records and a report land in $OUT, nowhere else."""
    out = tmp_path / "out"
    before = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.jsonl"))
    res = subprocess.run(["bash", str(RUN), "smoke"], cwd=ROOT, env=_env(tmp_path, INPO_STEP_SYSTEMS="inpo"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    names = {p.name for p in out.iterdir()}
    assert {"setup.log", "smoke.log", "smoke-head.jsonl", "smoke-step.jsonl", "smoke-iteration.jsonl",
            "smoke-REPORT.md"} <= names
    assert len(names) <= 8, "the device returns at most 8 files"
    for kind in ("head", "step", "iteration"):
        recs = _records(out / f"smoke-{kind}.jsonl")
        assert all(r["commit"] == "test-commit" for r in recs), "INPO_COMMIT must reach the records"
        assert all("device" in r and "date" in r for r in recs)
    assert any(r.get("fwd_bwd_ms") for r in _records(out / "smoke-head.jsonl"))
    assert {r["system"] for r in _records(out / "smoke-step.jsonl")} == {"inpo"}
    assert all(r.get("smoke") for r in _records(out / "smoke-iteration.jsonl"))
    assert (out / "smoke-REPORT.md").read_text().strip()
    assert "stage smoke:" in res.stdout and "wall" in res.stdout
    after = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.jsonl"))
    assert after == before, "smoke must not add result files to bench/results"


def test_git_commit_prefers_inpo_commit(monkeypatch):
    record.git_commit.cache_clear()
    try:
        monkeypatch.setenv("INPO_COMMIT", "abc123def456+dirty")
        assert record.git_commit() == "abc123def456+dirty"
        assert record.environment_info("cpu")["commit"] == "abc123def456+dirty"
        record.git_commit.cache_clear()
        monkeypatch.setenv("INPO_COMMIT", "  ")
        assert record.git_commit() != "  "  # blank means unset: git (or "unknown")
    finally:
        record.git_commit.cache_clear()
