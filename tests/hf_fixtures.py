"""Tiny real-architecture Hugging Face models and tokenizers, built locally (never the hub), for tests of the
user path: a Qwen2-style model with a ChatML template and a Llama-3-style model with the Llama-3 template.

What makes them realistic where it matters for data handling:

* byte-level BPE tokenizers trained in-process (~10 ms) on the embedded task's corpus, with the real special
  tokens of each family;
* **Qwen2 base style**: eos is ``<|endoftext|>`` while the chat template ends a turn with ``<|im_end|>`` (and
  renders a newline after it); no bos; the Qwen2 template with its default system message;
* **Llama-3 base style**: bos ``<|begin_of_text|>`` (the template writes it; the post-processor also adds it to
  plain ``tokenizer(text)`` calls, as the real one does), eos ``<|end_of_text|>``, end of turn ``<|eot_id|>``;
* models: ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` random init (~0.1 M params), and a
  ``Qwen2ForSequenceClassification`` reward model (``num_labels=1``), saved with ``save_pretrained`` and the
  tokenizer beside them, so ``from_pretrained(dir)`` loads them like any downloaded checkpoint.

Builders return the directory; the session-scoped pytest fixtures at the bottom build each once per test run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

__all__ = ["QWEN2_CHAT_TEMPLATE", "LLAMA3_CHAT_TEMPLATE", "chatml_tokenizer", "llama3_tokenizer",
           "save_qwen2", "save_llama3", "save_qwen2_reward", "save_qwen2_pairwise", "write_jsonl"]

# Qwen2-Instruct's template (the ChatML family), verbatim in behaviour: a default system turn when none is given.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct's template.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_CHAT_WORDS = ("system user assistant You are a helpful assistant. Answer briefly. Hello! How are you? "
               "I am fine, thank you. What is the capital of France? Paris.\n\n")


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    from inpo.data.prompts import default_prompts, sft_examples

    lines = default_prompts("train") + default_prompts("eval") + [r for _, r in sft_examples(400, seed=7)]
    return tuple(lines + [_CHAT_WORDS] * 20)


# The split pattern of the Llama-3 / Qwen2 tokenizers (tokenizer.json's pre_tokenizer): unlike GPT-2's it keeps a
# run of newlines in one piece, so "<|end_header_id|>\n\n" tokenizes the same with or without a response after it.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train(specials: list[str], vocab_size: int, post=None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = post(tok) if post else processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(_corpus()), trainer=trainer)
    return tok


def chatml_tokenizer(vocab_size: int = 600):
    """Qwen2-base-style tokenizer: eos ``<|endoftext|>`` (also pad), end of turn ``<|im_end|>``, no bos."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    fast = PreTrainedTokenizerFast(tokenizer_object=_train(specials, vocab_size), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=specials[1:],
                                   model_max_length=32768)
    fast.chat_template = QWEN2_CHAT_TEMPLATE
    return fast


def llama3_tokenizer(vocab_size: int = 600):
    """Llama-3-base-style tokenizer: bos ``<|begin_of_text|>`` (added to plain encodes too), eos
    ``<|end_of_text|>``, end of turn ``<|eot_id|>``; no pad token (as shipped)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

    def post(tok):  # the real Llama-3 tokenizer's post-processor: bos before every plain encode
        return processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", 0)])])

    fast = PreTrainedTokenizerFast(tokenizer_object=_train(specials, vocab_size, post), bos_token=specials[0],
                                   eos_token=specials[1], additional_special_tokens=specials[2:],
                                   model_max_length=131072)
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def _small(config_cls, tok, **kw):
    return config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **kw)


def save_qwen2(path, tokenizer=None, *, seed: int = 0) -> Path:
    """A random-init ``Qwen2ForCausalLM`` + the ChatML tokenizer, saved in ``path``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer or chatml_tokenizer()
    torch.manual_seed(seed)
    cfg = _small(Qwen2Config, tok, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                 tie_word_embeddings=True)
    return _save(Qwen2ForCausalLM(cfg), tok, path)


def save_llama3(path, tokenizer=None, *, seed: int = 0) -> Path:
    """A random-init ``LlamaForCausalLM`` + the Llama-3 tokenizer, saved in ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or llama3_tokenizer()
    torch.manual_seed(seed)
    cfg = _small(LlamaConfig, tok, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _save(LlamaForCausalLM(cfg), tok, path)


def save_qwen2_reward(path, tokenizer=None, *, seed: int = 1) -> Path:
    """A random-init ``Qwen2ForSequenceClassification`` reward model (``num_labels=1``) + ChatML tokenizer."""
    return _save_classifier(path, tokenizer, seed, num_labels=1)


def save_qwen2_pairwise(path, tokenizer=None, *, seed: int = 2) -> Path:
    """A random-init 2-label ``Qwen2ForSequenceClassification`` for ``pairwise:PATH`` (label 0 = A wins)."""
    return _save_classifier(path, tokenizer, seed, num_labels=2)


def _save_classifier(path, tokenizer, seed, num_labels) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tok = tokenizer or chatml_tokenizer()
    torch.manual_seed(seed)
    cfg = _small(Qwen2Config, tok, num_labels=num_labels, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)
    return _save(Qwen2ForSequenceClassification(cfg), tok, path)


def _save(model, tok, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def write_jsonl(path, records) -> Path:
    import json

    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- pytest fixtures: each model is built once per test session ------------------------------------------------

@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    return save_qwen2(tmp_path_factory.mktemp("hf") / "qwen2")


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> Path:
    return save_llama3(tmp_path_factory.mktemp("hf") / "llama3")


@pytest.fixture(scope="session")
def qwen2_reward_dir(tmp_path_factory) -> Path:
    return save_qwen2_reward(tmp_path_factory.mktemp("hf") / "qwen2_rm")


@pytest.fixture(scope="session")
def qwen2_pairwise_dir(tmp_path_factory) -> Path:
    return save_qwen2_pairwise(tmp_path_factory.mktemp("hf") / "qwen2_pm")
