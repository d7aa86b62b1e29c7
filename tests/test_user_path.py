"""A user's own model and data (issue 13, items 1-4) on locally built Qwen2-style (ChatML) and Llama-3-style
tokenizers: the chat template on the whole conversation, stop tokens, TRL's dataset formats, truncation,
plain text behind an explicit flag, model-dependent defaults and TRL aliases. End-to-end runs are in
tests/test_user_path_runs.py."""

import json

import pytest

from inpo.data import encode_pair  # the public entry point
from inpo.data.chat import (Truncation, encode_completion, encode_prompt, normalize_pair, stop_token_ids,
                            use_plain_text)
from tests.hf_fixtures import (chatml_tokenizer, llama3_tokenizer, qwen2_dir, qwen2_reward_dir,  # noqa: F401 (fixtures)
                               write_jsonl)

SYSTEM_CONV = [{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "Hello!"},
               {"role": "assistant", "content": "Hello! How are you?"},
               {"role": "user", "content": "Describe the ocean."}]


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def tok(request):
    return chatml_tokenizer() if request.param == "qwen2" else llama3_tokenizer()


def _template_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("prompt", ["Describe the ocean.", SYSTEM_CONV], ids=["standard", "conversational"])
def test_encode_pair_is_the_template_on_the_whole_conversation(tok, prompt):
    rec = {"prompt": prompt, "chosen": "The ocean is calm.", "rejected": "Blue"}
    p, c, r = encode_pair(tok, rec)
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    assert p == _template_ids(tok, msgs, add_generation_prompt=True)
    for resp, ids in (("The ocean is calm.", c), ("Blue", r)):
        assert p + ids == _template_ids(tok, msgs + [{"role": "assistant", "content": resp}])
    # the response ends with the end-of-turn token (+ ChatML's newline), never with the base model's eos
    eot = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else "<|eot_id|>"
    tail = tok.convert_ids_to_tokens(c[-2:])
    assert eot in tail and tok.eos_token_id not in c
    if eot == "<|im_end|>":
        assert tail == ["<|im_end|>", "Ċ"]  # "<|im_end|>\n", as the template renders it
    # the system message and the earlier turns are kept
    if not isinstance(prompt, str):
        text = tok.decode(p)
        assert "Answer briefly." in text and "Hello! How are you?" in text


def test_stop_tokens_are_eos_and_end_of_turn():
    q, ll = chatml_tokenizer(), llama3_tokenizer()
    assert [q.convert_ids_to_tokens(i) for i in stop_token_ids(q)] == ["<|endoftext|>", "<|im_end|>"]
    assert [ll.convert_ids_to_tokens(i) for i in stop_token_ids(ll)] == ["<|end_of_text|>", "<|eot_id|>"]
    from inpo.data.tokenizer import default_tokenizer

    d = default_tokenizer()
    assert stop_token_ids(d) == [d.eos_token_id]  # the embedded template ends a turn with eos itself


def test_hf_sampler_stops_on_the_end_of_turn_token(qwen2_dir):
    """A model that emits <|im_end|> at its 3rd new token: every response ends there (ChatML's eos differs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.data.tokenizer import load_tokenizer
    from inpo.generation import HFSampler

    tok = load_tokenizer(qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(str(qwen2_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    step = {"n": 0}

    widths = []

    def count(module, args, kwargs):  # a prefill (more than one new input token) starts a response
        ids = kwargs.get("input_ids")
        step["n"] = 0 if ids is not None and ids.shape[1] > 1 else step["n"] + 1
        if step["n"] == 0:
            widths.append(ids.shape[1])

    def force(module, args, kwargs, output):
        output.logits[..., :] = -1e4
        output.logits[..., im_end if step["n"] == 2 else 300] = 1e4  # two ordinary tokens, then end of turn
        return output

    model.register_forward_pre_hook(count, with_kwargs=True)
    model.register_forward_hook(force, with_kwargs=True)
    s = HFSampler(model, tok, max_new_tokens=8, temperature=1.0)
    out = s.sample(["Describe the ocean.", SYSTEM_CONV], 2, seed=0)
    assert s.last_stats["finished"] == 4 and s.last_lengths == [2] * 4
    assert all("<|im_end|>" not in y for ys in out for y in ys)
    # max_prompt_length: generation starts from the prompt's last tokens
    widths.clear()
    HFSampler(model, tok, max_new_tokens=3, max_prompt_length=5).sample([SYSTEM_CONV], 1)
    assert widths == [5]


def test_plain_text_needs_the_flag_and_follows_trl():
    tok = llama3_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template: none"):
        encode_prompt(tok, "The sky is")
    use_plain_text(tok)
    p, c, r = encode_pair(tok, {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})
    assert p == tok("The sky is")["input_ids"] and p[0] == tok.bos_token_id  # the tokenizer's own bos, as TRL
    assert p + c == tok("The sky is blue.<|end_of_text|>")["input_ids"] and c[-1] == tok.eos_token_id
    assert stop_token_ids(tok) == [tok.eos_token_id]
    with pytest.raises(ValueError, match="needs a chat template"):
        encode_prompt(tok, SYSTEM_CONV)


def test_trl_formats_normalise():
    conv = lambda t: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": t}]  # noqa: E731
    # implicit prompt, conversational: the common prefix of turns
    assert normalize_pair({"chosen": conv("yes"), "rejected": conv("no")}) == {
        "prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}]}
    # implicit prompt, standard: the common prefix of text, the space stays with the completion (as TRL)
    assert normalize_pair({"chosen": "The sky is blue.", "rejected": "The sky is green."}) == {
        "prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    # explicit conversational prompt keeps the system turn; a standard prompt with conversational answers
    rec = normalize_pair({"prompt": SYSTEM_CONV, "chosen": conv("a")[1:], "rejected": conv("b")[1:]})
    assert rec["prompt"] == SYSTEM_CONV
    assert normalize_pair({"prompt": "Q?", "chosen": conv("a")[1:], "rejected": conv("b")[1:]})["prompt"] == \
        [{"role": "user", "content": "Q?"}]
    for bad, match in [({"prompt": "Q", "chosen": "a"}, r"missing field\(s\) \['rejected'\]"),
                       ({"prompt": "Q", "chosen": "a", "rejected": conv("b")}, "both be strings or both message lists"),
                       ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "'chosen' must be a string"),
                       ({"chosen": "abc", "rejected": "xyz"}, "share no prefix"),
                       ({"prompt": "Q", "chosen": [{"role": "user", "content": "a"}], "rejected": conv("b")[1:]},
                        "must start with an assistant turn")]:
        with pytest.raises(ValueError, match=match):
            normalize_pair(bad, "f.jsonl:3")


def test_prompt_files_take_every_trl_format(tmp_path):
    from inpo.data.prompts import load_prompts, split_prompts

    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Describe the sea."},
        {"prompt": SYSTEM_CONV},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"messages": SYSTEM_CONV + [{"role": "assistant", "content": "Calm."}]},
    ])
    assert load_prompts(f) == ["Describe the sea.", SYSTEM_CONV, "The sky is", SYSTEM_CONV]
    pool = [f"p{i}" for i in range(10)]
    ev, tr = split_prompts(pool, "eval"), split_prompts(pool, "train")
    assert len(ev) == 2 and set(ev).isdisjoint(tr) and sorted(ev + tr) == sorted(pool)
    assert split_prompts(pool, "eval") == ev  # fixed: the same held-out prompts for training and `inpo eval`
    with pytest.raises(ValueError, match="at least 2"):
        split_prompts(["only"], "eval")


def test_truncation_follows_trl():
    p, r = list(range(10)), list(range(100, 110))
    assert Truncation(max_prompt_length=4).apply(p, r) == ([6, 7, 8, 9], r)  # a prompt keeps its end
    assert Truncation(max_completion_length=3).apply(p, r) == (p, [100, 101, 102])
    assert Truncation(max_length=14).apply(p, r) == (p, [100, 101, 102, 103])  # keep_start cuts the end
    assert Truncation(max_length=10).apply(p, r) is None  # the prompt alone fills it: dropped, as TRL
    assert Truncation(max_length=14, mode="keep_end").apply(p, r) == ([6, 7, 8, 9], r)
    # keep_end past the whole prompt: the first kept token is the (unscored) context
    assert Truncation(max_length=5, mode="keep_end").apply(p, r) == ([105], [106, 107, 108, 109])
    assert Truncation(max_length=25).apply(p, r) == (p, r)
    with pytest.raises(ValueError, match="truncation_mode must be one of"):
        Truncation(max_length=5, mode="left")
    with pytest.raises(ValueError, match="max_prompt_length must be a positive int"):
        Truncation(max_prompt_length=0)


def test_defaults_fit_the_model_and_trl_names_are_accepted():
    from inpo.train.config import load_config

    emb = load_config(None, {})
    assert emb.lr == 5e-4 and emb.max_length is None and emb.make_objective().eta == 0.25
    assert load_config(None, {"objective": "dpo"}).make_objective().beta == 0.5
    user = load_config(None, {"model": "some/dir"})
    obj = user.make_objective()
    assert user.lr == 5e-7 and obj.eta == 0.0075 and obj.ratio == pytest.approx(1 / 3)
    assert user.max_length == 1024 and "lr=5e-07" in user.default_notes() and "eta=0.0075" in user.default_notes()
    dpo = load_config(None, {"model": "d", "loss_type": "sigmoid"})
    assert dpo.objective == "dpo" and dpo.make_objective().beta == 0.1 and dpo.lr == 1e-6
    assert load_config(None, {"model": "d", "objective": "ipo"}).make_objective().beta == 0.1
    # explicit values win over both tables; an explicit null max_length means no limit
    assert load_config(None, {"model": "d", "learning_rate": 2e-6, "max_length": None}).lr == 2e-6
    assert load_config(None, {"model": "d", "max_length": None}).max_length is None
    trl = load_config(None, {"num_train_epochs": 3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                             "bf16": True, "max_prompt_length": 128, "truncation_mode": "keep_end",
                             "no_chat_template": True})
    assert (trl.epochs, trl.batch_pairs, trl.max_prompt_length, trl.truncation_mode, trl.chat_template) == \
        (3, 8, 128, "keep_end", "none")
    with pytest.raises(ValueError, match="bf16=false is not supported"):
        load_config(None, {"bf16": False})
    with pytest.raises(ValueError, match="loss_type 'hinge'"):
        load_config(None, {"loss_type": "hinge"})
    # hints never point at a key of another meaning
    with pytest.raises(ValueError, match="did you mean 'max_prompt_length'"):
        load_config(None, {"max_promt_length": 3})
    with pytest.raises(ValueError) as exc:
        load_config(None, {"max_prompt_tokens": 3})
    assert "eval_prompts" not in str(exc.value) and "max_prompt_length" in str(exc.value)


def test_config_yaml_with_trl_names(tmp_path):
    from inpo.train.config import load_config

    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1.0e-6\nmodel_name_or_path: m\noutput_dir: out\nmax_length: 256\n"
                 "chat_template: none\n")
    cfg = load_config(f)
    assert (cfg.lr, cfg.model, cfg.output, cfg.max_length, cfg.chat_template) == (1e-6, "m", "out", 256, "none")
    f.write_text("chat_template: chatml\n")
    with pytest.raises(ValueError, match="chat_template must be 'auto'"):
        load_config(f)


def test_sequences_truncate_and_drop(tmp_path):
    """The loop's encoder applies TRL truncation per sequence and drops a pair whose prompt fills max_length."""
    from inpo.online import training_sequences as _sequences
    from inpo.train.config import load_config

    tok = chatml_tokenizer()
    data = [{"prompt": "Describe the ocean.", "chosen": "The ocean is calm and soft today.", "rejected": "Blue."},
            {"prompt": "Describe " + "the ocean and " * 30 + "the sky.", "chosen": "Calm.", "rejected": "Blue."}]
    p0 = encode_prompt(tok, data[0]["prompt"])
    cfg = load_config(None, {"model": "m", "max_length": len(p0) + 3, "max_tokens": 4096})
    seqs, kept = _sequences(tok, data, True, cfg)
    assert kept == data[:1] and len(seqs) == 2
    full_c = encode_completion(tok, data[0]["prompt"], data[0]["chosen"])[1]
    assert seqs[0] == (p0, full_c[:3]) and len(seqs[1][1]) <= 3
    cfg = load_config(None, {"model": "m", "max_length": None, "max_tokens": 40})
    with pytest.raises(ValueError, match="more than max_tokens=40"):
        _sequences(tok, data, True, cfg)


def test_pairs_file_formats_end_to_end_encoding(tmp_path):
    from inpo.data.pairs import load_pairs

    tok = chatml_tokenizer()
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": SYSTEM_CONV, "chosen": [{"role": "assistant", "content": "Calm."}],
         "rejected": [{"role": "assistant", "content": "Blue."}]},
        {"chosen": SYSTEM_CONV + [{"role": "assistant", "content": "Calm."}],
         "rejected": SYSTEM_CONV + [{"role": "assistant", "content": "Blue."}]},
    ])
    a, b = load_pairs(f)
    assert a == b and a["prompt"] == SYSTEM_CONV  # explicit and implicit give the same record
    p, c, r = encode_pair(tok, a)
    assert p + c == _template_ids(tok, SYSTEM_CONV + [{"role": "assistant", "content": "Calm."}])
    assert json.loads(json.dumps(a)) == a


def test_oracles_read_conversational_prompts(qwen2_reward_dir):
    """The synthetic oracle reads a conversation's last user turn; a reward model reads the whole conversation
    (system and earlier turns included) through its own chat template."""
    from inpo.oracles import RewardModelOracle, SyntheticIntransitiveOracle

    syn = SyntheticIntransitiveOracle()
    a, b = "The ocean is calm and blue.", "Rock."
    assert syn.prob_batch([SYSTEM_CONV], [a], [b])[0] == syn.prob("Describe the ocean.", a, b)
    rm = RewardModelOracle(str(qwen2_reward_dir))
    text = rm._chat(SYSTEM_CONV, a)
    assert "Answer briefly." in text and "Hello! How are you?" in text and text.endswith("<|im_end|>\n")
    r_conv, r_plain = rm.score([SYSTEM_CONV, "Describe the ocean."], [a, a])
    assert r_conv != r_plain  # the earlier turns reach the reward model
