"""The real tier against TRL 1.16 (`make test-real`): ``encode_pair`` on SmolLM2's tokenizer and ChatML template
gives exactly the ids TRL's own DPOTrainer dataset preparation gives (``DPOTrainer._prepare_dataset``: prompt
extraction, eos for standard rows, the chat template on the whole conversation, the common-prefix split)."""

from __future__ import annotations

import types

import pytest

pytestmark = pytest.mark.real

USER = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "Answer in one short sentence."}
GOOD = {"role": "assistant", "content": "The capital of France is Paris."}
BAD = {"role": "assistant", "content": "France is a country in Europe; its capital\nis Lyon, I think."}

CONVERSATIONAL = {
    # no system message: the template inserts SmolLM's default system prompt, in the prompt and in both answers
    "no system": {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
    "system": {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]},
    "multi-turn": {"prompt": [SYSTEM, USER, GOOD, {"role": "user", "content": "And of Italy? Why?"}],
                   "chosen": [{"role": "assistant", "content": "Rome: it has been the capital since 1871."}],
                   "rejected": [{"role": "assistant", "content": "Milan, because it is the largest city."}]},
    "multi-turn, no system": {"prompt": [USER, GOOD, {"role": "user", "content": "Spell it backwards."}],
                              "chosen": [{"role": "assistant", "content": "siraP"}],
                              "rejected": [{"role": "assistant", "content": "Sirap"}]},
    "implicit": {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
    "implicit, system, multi-turn": {"chosen": [SYSTEM, USER, GOOD, {"role": "user", "content": "Thanks!"},
                                                {"role": "assistant", "content": "You're welcome."}],
                                     "rejected": [SYSTEM, USER, GOOD, {"role": "user", "content": "Thanks!"},
                                                  {"role": "assistant", "content": "Whatever."}]},
    "unicode and code": {"prompt": [{"role": "user", "content": "Écris `print(1)` en Python — pourquoi ?"}],
                         "chosen": [{"role": "assistant", "content": "```python\nprint(1)\n```\nÇa affiche 1."}],
                         "rejected": [{"role": "assistant", "content": "  Je ne sais pas.  "}]},
}
STANDARD = {  # plain text (TRL's standard format; ours behind chat_template: none): prompt, then response + eos
    "standard": {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon."},
    "standard, implicit": {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"},
}


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from inpo.data.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def trl_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))  # what a TRL user passes as processing_class


def _trl_ids(trl_tok, record):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", max_length=None, dataset_num_proc=None, report_to="none", use_cpu=True,
                     bf16=False)
    # DPOTrainer's own preparation; ``self`` is only read for its tokenizer
    fake_self = types.SimpleNamespace(_tokenizer=trl_tok)
    ds = DPOTrainer._prepare_dataset(fake_self, Dataset.from_list([record]), trl_tok, args, "train")
    row = ds[0]
    return row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]


# A response starting with spaces merges with the template's "\n" across the seam: TRL splits at the common prefix
# (the prompt loses its last "\n"), inpo.data.chat (at this commit) cuts at len(prompt_ids). Helper `vllm` brings
# TRL's common-prefix split (issue 21); strict, so the mark must go when it lands.
@pytest.mark.parametrize("case", CONVERSATIONAL)
def test_encode_pair_equals_trl_conversational(tok, trl_tok, case):
    from inpo.data.chat import encode_pair

    record = CONVERSATIONAL[case]
    ours = encode_pair(tok, record)
    assert ours == _trl_ids(trl_tok, record)
    text = tok.decode(ours[0] + ours[1])
    assert text.endswith("<|im_end|>\n") and text.startswith("<|im_start|>system\n")
    if all(m["role"] != "system" for m in record.get("prompt", record["chosen"])):
        assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt


@pytest.mark.parametrize("case", list(STANDARD))
def test_encode_pair_equals_trl_standard(smollm2_dir, trl_tok, case):
    from inpo.data.chat import encode_pair, use_plain_text
    from inpo.data.tokenizer import load_tokenizer

    plain = use_plain_text(load_tokenizer(smollm2_dir))
    record = STANDARD[case]
    ours = encode_pair(plain, record)
    assert ours == _trl_ids(trl_tok, record)
    assert ours[1][-1] == ours[2][-1] == plain.eos_token_id
