"""Chat templates whose rendering of the prompt is not a prefix of the whole conversation's (issue 21): a reasoning
template that opens ``<think>`` in the generation prompt only, and a generation prompt ending in a space that merges
with the response's first word. Responses are split as TRL 1.16 splits them (at the common prefix) and checked
against TRL's own tokenisation (its DPOTrainer's dataset); templates that fail, and conversations under plain text,
are one line naming file:line (exit 2)."""

import copy
import json
import warnings

import pytest
import torch

from inpo.data.chat import encode_completion, encode_pair, encode_prompt, stop_token_ids
from tests.hf_fixtures import chatml_tokenizer, save_qwen2, write_jsonl

# Qwen3-style: the generation prompt holds an empty thought block that the full conversation does not.
THINK = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
# "Assistant: " then the response: the byte-level BPE merges the space with the response's first word.
SPACE = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}Assistant: "
         "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")
# Raises on a role it does not know, as many shipped templates do.
STRICT = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}<|im_start|>{{ m['role'] }}\n"
          "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# responses opening with words the BPE has a " word" token for (" the", " Hello", " I", " a", " it", " calm"), and
# one pair whose rejected opens with a word it has none for ("Blue"): the pair's split is the earlier seam
ROWS = [("Describe the sea.", "calm and blue.", "Blue"),
        ("Write about the ocean.", "the ocean is deep and wide.", "a wave."),
        ("Tell me something.", "I know a story.", "it is late."),
        ("Say hi.", "Hello there!", "Hello.")]


def _tok(template):
    tok = chatml_tokenizer()
    tok.chat_template = template
    return tok


def _conversational(rows):
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in rows]


def _trl_tokenised(tok, records) -> list[tuple[list, list, list]]:
    """TRL 1.16's DPOTrainer tokenisation of ``records`` (its train_dataset's prompt/chosen/rejected ids)."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from inpo.train.model import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir="/nonexistent-inpo-trl", report_to=[], use_cpu=True, per_device_train_batch_size=1)
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                             train_dataset=Dataset.from_list(records), processing_class=tok)
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset]


@pytest.mark.parametrize("template", [THINK, SPACE], ids=["think", "space"])
def test_pairs_split_at_the_common_prefix_as_trl_does(template):
    pytest.importorskip("trl")
    tok = _tok(template)
    records = _conversational(ROWS)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ours = [encode_pair(tok, r) for r in records]
    assert ours == _trl_tokenised(tok, records)
    seam = [w for w in seen if "not a prefix" in str(w.message)]
    assert len(seam) == 1  # once per tokenizer, naming the prompt's end that is left out
    cut = [len(p) < len(encode_prompt(tok, rec["prompt"])) for (p, _, _), rec in zip(ours, records)]
    assert all(cut)  # the case at hand: the renderings differ before the prompt's end
    for (p, c, r), rec in zip(ours, records):
        for ids, turn in ((c, rec["chosen"]), (r, rec["rejected"])):
            full = tok.apply_chat_template(rec["prompt"] + turn, tokenize=True)
            full = list(full["input_ids"] if hasattr(full, "keys") else full)
            assert p + ids == full  # nothing of the conversation is lost
            assert turn[0]["content"] in tok.decode(ids)  # the whole response, first word included


@pytest.mark.parametrize("template", [THINK, SPACE], ids=["think", "space"])
def test_sampled_responses_keep_every_token(template):
    """Online samples go through the same split: before it, the think template lost 6 tokens of each response and
    the space template the first word; the end-of-turn probe failed with "encodes to no tokens"."""
    tok = _tok(template)
    assert tok.convert_ids_to_tokens(stop_token_ids(tok)) == ["<|endoftext|>", "<|im_end|>"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for prompt, response in (("Hi.", "Hello there."), ("Describe the sea.", "the sea is calm and blue.")):
            p, r = encode_completion(tok, prompt, response)
            assert response in tok.decode(r)  # the first word too
            full = tok.apply_chat_template([{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}], tokenize=True)["input_ids"]
            assert p + r == list(full)


def test_a_template_that_raises_names_the_file_and_line(tmp_path, capsys):
    """A role the template does not know: one line naming data.jsonl:2 and the template's message, exit 2."""
    from inpo.train.cli import main as train_main

    model = save_qwen2(tmp_path / "model", _tok(STRICT))
    good = {"prompt": [{"role": "user", "content": "Describe the sea."}],
            "chosen": [{"role": "assistant", "content": "Calm."}], "rejected": [{"role": "assistant", "content": "No"}]}
    bad = copy.deepcopy(good)
    bad["prompt"] = [{"role": "tool", "content": "{}"}] + bad["prompt"]
    data = write_jsonl(tmp_path / "data.jsonl", [good, bad])
    out = tmp_path / "run"
    capsys.readouterr()
    rc = train_main(["--model", str(model), "--data", str(data), "--output", str(out), "--objective", "dpo",
                     "--progress", "false", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"{data}:2: the chat template" in err[0] and "Unknown role: tool" in err[0] and "Traceback" not in err[0]
    assert not out.exists()  # refused before the run directory is touched
    from inpo.data.pairs import load_pairs

    with pytest.raises(ValueError, match=f"{data}:2: the chat template"):  # the API names it too
        encode_pair(_tok(STRICT), load_pairs(data)[1])


def test_conversational_rows_under_plain_text_name_the_file_and_line(tmp_path, capsys):
    from inpo.train.cli import main as train_main

    model = save_qwen2(tmp_path / "model", chatml_tokenizer())
    conv = {"prompt": [{"role": "user", "content": "Describe the sea."}],
            "chosen": [{"role": "assistant", "content": "Calm."}], "rejected": [{"role": "assistant", "content": "No"}]}
    std = {"prompt": "Describe the sea.", "chosen": " Calm.", "rejected": " No"}
    data = write_jsonl(tmp_path / "data.jsonl", [std, std, conv])
    base = ["--model", str(model), "--no-chat-template", "--progress", "false", "--threads", "1"]
    capsys.readouterr()
    rc = train_main(base + ["--data", str(data), "--output", str(tmp_path / "a"), "--objective", "dpo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{data}:3: a conversational prompt" in err[0], err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hi.", "Tell me.", conv["prompt"]] * 4) + "\n")
    rc = train_main(base + ["--prompts", str(prompts), "--output", str(tmp_path / "b"), "--sampler", "hf"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{prompts}:3: a conversational prompt" in err[0], err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_generation_prompt_is_unchanged():
    """Sampling still starts from the template's generation prompt (what the model sees at inference)."""
    tok = _tok(THINK)
    ids = encode_prompt(tok, "Describe the sea.")
    assert tok.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert torch.tensor(ids).numel() == len(tok.apply_chat_template([{"role": "user", "content": "Describe the sea."}],
                                                                     add_generation_prompt=True, tokenize=True)
                                            ["input_ids"])
