"""Checkpoints and TRL metrics on locally built real-architecture models (tests/hf_fixtures.py): a Qwen2 (ChatML,
untied head) and a Llama-3-style model; each checkpoint loads back as the user's architecture and tokenizer."""

import pytest

hf = pytest.importorskip("tests.hf_fixtures", reason="tests/hf_fixtures.py (the Qwen2 / Llama-3 builders) not present")
qwen2_dir, llama3_dir = hf.qwen2_dir, hf.llama3_dir  # fixtures

from tests.test_online import _pairs_file, read_metrics  # noqa: E402
from tests.test_reporting import TRL_KEYS  # noqa: E402


@pytest.mark.parametrize("fixture,arch", [("qwen2_dir", "Qwen2ForCausalLM"), ("llama3_dir", "LlamaForCausalLM")])
def test_checkpoint_of_a_user_model_loads_as_that_model(request, tmp_path, fixture, arch):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.online.cli import main

    model_dir = request.getfixturevalue(fixture)
    data = _pairs_file(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--objective", "dpo",
                 "--epochs", "2", "--batch-pairs", "2", "--impl", "torch", "--progress", "false", "--threads", "1",
                 "--checkpoint-every", "1", "--max-steps", "1"]) == 0
    (ck,) = (out / "checkpoints").glob("ckpt-*")
    model = AutoModelForCausalLM.from_pretrained(str(ck))
    assert type(model).__name__ == arch
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in load_file(str(ck / "model.safetensors")).items())
    tok, user_tok = AutoTokenizer.from_pretrained(str(ck)), AutoTokenizer.from_pretrained(str(model_dir))
    assert tok.chat_template == user_tok.chat_template and tok.eos_token == user_tok.eos_token
    assert tok.get_vocab() == user_tok.get_vocab()
    (step,) = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert TRL_KEYS <= step.keys() and step["rewards/chosen"] == pytest.approx(0, abs=1e-4)  # step 1: π = π_ref
