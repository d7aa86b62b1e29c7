"""The real-engine tier, end to end: ``inpo train --sampler vllm`` in a subprocess (so that its output, shutdown
warnings included, can be read), after tests/test_vllm.py's engine has shut down."""

import datetime
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The default policy's shape with random weights (the SFT'd default costs minutes to build on a cold cache)."""
    import torch
    from transformers import LlamaForCausalLM

    from inpo.data.tokenizer import default_tokenizer
    from inpo.train.model import export_policy, tiny_llama_config

    tok = default_tokenizer()
    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    return str(export_policy(LlamaForCausalLM(cfg), tok, tmp_path_factory.mktemp("tiny") / "model"))


def test_one_online_iteration_with_the_vllm_sampler(model_dir, tmp_path):
    """``inpo train --sampler vllm`` on the embedded task (prompts, synthetic oracle): one engine for generation and
    both evaluations, the weights reloaded in place, distinct samples, and a clean shutdown (no leaked shared
    memory, no force-killed engine)."""
    out = tmp_path / "run"
    args = ["--model", model_dir, "--output", str(out), "--sampler", "vllm", "--iterations", "1", "--n-prompts", "16",
            "--k", "4", "--max-new-tokens", "16", "--n-eval", "8", "--eval-k", "2", "--batch-pairs", "4", "--epochs",
            "1", "--n-bootstrap", "50", "--progress", "false", "--threads", "1"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "inpo", "train", *args], capture_output=True, text=True, env=env,
                          timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "leaked shared_memory" not in log and "force killing" not in log, log[-4000:]
    # the reloads (pi_ref, pi_1) are quiet: no "Failed to load weights" for the rotary cache or the tied head
    assert "Failed to load weights" not in log, log[-4000:]
    # a prompt shutdown: the worker exits within vLLM's grace period (no SIGTERM), the engine within seconds
    assert "still running after grace period" not in log and "sending SIGTERM" not in log, log[-4000:]
    stamps = [_log_time(line) for line in log.splitlines() if "[shutdown] MPClient: start" in line or
              "[shutdown] MPClient: complete" in line]
    assert len(stamps) == 2 and (stamps[1] - stamps[0]).total_seconds() <= 6, stamps
    assert log.count("Initializing a V1 LLM engine") == 1, log[-4000:]  # one engine for the whole run
    rows = [json.loads(x) for x in (out / "iter_000" / "samples.jsonl").read_text().splitlines()]
    texts = [y for r in rows for y in r["responses"]]
    assert len(texts) == 64 and len(set(texts)) >= 0.9 * len(texts), len(set(texts))
    it = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"iteration"' in x]
    assert [r for r in it if r.get("kind") == "iteration" and "win_rate" in r]


def _log_time(line: str) -> datetime.datetime:
    """The time of a vLLM log line ("... INFO 12-03 13:45:17 [...]")."""
    m = re.search(r" (\d\d-\d\d \d\d:\d\d:\d\d) \[", line)
    return datetime.datetime.strptime(m.group(1), "%m-%d %H:%M:%S")
