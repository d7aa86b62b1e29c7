"""bench/real.py at smoke size on the real model (`make test-real`): both systems of the step bench run in their own
processes and write one record with the context a reader needs (load, threads, commit, command) and a FLOP floor
that is a fraction of the step, not a made-up number. Smoke numbers are not measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[1]


def test_step_bench_smoke_writes_a_complete_record(smollm2_dir, tmp_path):
    out = tmp_path / "step.jsonl"
    cmd = [sys.executable, "-m", "bench.real", "step", "--smoke", "--threads", "1", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"load_before", "load_after", "threads", "commit", "command"} <= rec.keys() and rec["smoke"]
    for system in ("inpo", "trl"):
        (run,) = rec["runs"][system]
        assert run["tokens"] > 0 and run["step_s"] and run["peak_rss_bytes"] > 0
        assert 0 < run["pct_of_floor"] < 100  # no step beats its own FLOP floor at a measured peak
    assert rec["runs"]["inpo"][0]["tokens"] == rec["runs"]["trl"][0]["tokens"]  # the same pairs
    assert rec["summary"]["speedup_vs_trl"] > 0


def test_floor_counts_body_and_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from bench.real import step_floor_flops

    cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    body = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters() if p.dim() == 2) - 100 * 16  # no norms
    seqs = [([1, 2, 3], [4, 5]), ([1, 2, 3], [6])]
    assert step_floor_flops(cfg, seqs) == 6 * body * 9 + 8 * 3 * 16 * 100
