"""The real model's conversion (`make test-real`): the saved folders are the GGUF model, exactly, and a failed
conversion publishes nothing that looks done."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.real

TEXTS = ["<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
         "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
         "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"]


@pytest.fixture(scope="module")
def gguf_model(smollm2_dir):
    from inpo.models.convert import load_gguf

    gguf = next(smollm2_dir.parent.glob("*.gguf"))
    return load_gguf(gguf)


@torch.no_grad()
def test_saved_folders_equal_the_gguf_model(smollm2_dir, gguf_model):
    from transformers import AutoModelForCausalLM

    reference, tok = gguf_model
    saved = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), local_files_only=True, dtype=torch.float32)
    assert type(saved).__name__ == "LlamaForCausalLM" and saved.config.num_hidden_layers == 30
    assert getattr(saved.config, "quantization_config", None) is None
    for text in TEXTS:
        ids = tok(text, return_tensors="pt").input_ids
        assert torch.equal(saved(ids).logits, reference(ids).logits), text
    bf16 = AutoModelForCausalLM.from_pretrained(str(smollm2_dir.parent / "bfloat16"), local_files_only=True)
    assert bf16.dtype == torch.bfloat16  # the folder says bf16: from_pretrained's default keeps it
    want = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    got = bf16.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    for folder in (smollm2_dir, smollm2_dir.parent / "bfloat16"):
        info = json.loads((folder / "inpo_model.json").read_text())
        assert info["wheel_sha256"] == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def test_tokenizer_and_template(smollm2_dir):
    from inpo.data.chat import stop_token_ids
    from inpo.data.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == TEXTS[0].replace("What is the capital of France?", "Hi")  # the default system prompt
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)


def test_a_failed_conversion_publishes_nothing(smollm2_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from inpo.models import convert

    gguf = next(smollm2_dir.parent.glob("*.gguf"))
    real_save = PreTrainedModel.save_pretrained

    def save_then_die(self, path, *a, **kw):
        real_save(self, path, *a, **kw)
        if self.dtype == torch.bfloat16:
            raise KeyboardInterrupt  # killed after the bf16 weights were written
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_gguf(gguf, {"float32": tmp_path / "float32", "bfloat16": tmp_path / "bfloat16"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float32"]  # complete, published; no half bf16 folder
    assert (tmp_path / "float32" / convert.MARKER).is_file()
