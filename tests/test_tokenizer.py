"""The default tokenizer: trained in-process, deterministic, cached, chat-templated, round-trips."""

import json

import pytest

from inpo.data.prompts import default_prompts, sft_examples
from inpo.data.chat import encode_completion
from inpo.data.tokenizer import CHAT_TEMPLATE, default_tokenizer, encode_prompt, load_tokenizer, train_tokenizer


def encode_response(tok, response, prompt="Describe the ocean."):
    """The response's ids as the trainer encodes them (the conversation minus the prompt)."""
    return encode_completion(tok, prompt, response)[1]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return default_tokenizer(tmp_path_factory.mktemp("tok-cache"))


def test_special_tokens_and_vocab(tok):
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert None not in ids and len(ids) == 3
    assert 512 <= len(tok) <= 1024
    assert tok.chat_template == CHAT_TEMPLATE


def test_deterministic_and_cached(tmp_path):
    a = default_tokenizer(tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tok-")]  # no temp dir left behind
    b = default_tokenizer(tmp_path)  # loaded from the cache
    fresh = default_tokenizer(tmp_path / "other")  # trained again from scratch
    assert a.get_vocab() == b.get_vocab() == fresh.get_vocab()
    assert a.backend_tokenizer.to_str() == fresh.backend_tokenizer.to_str()


def test_unwritable_cache_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    tok = default_tokenizer(blocker / "cache")  # mkdir fails: NotADirectoryError
    assert encode_response(tok, "The ocean is calm.")[-1] == tok.eos_token_id


def test_corrupt_cache_entry_is_replaced(tmp_path):
    good = default_tokenizer(tmp_path)
    entry = next(tmp_path.iterdir())
    (entry / "tokenizer.json").write_text("{ truncated")
    again = default_tokenizer(tmp_path)
    assert again.get_vocab() == good.get_vocab()
    json.loads((entry / "tokenizer.json").read_text())  # rewritten whole


def test_prompt_plus_response_is_the_chat_conversation(tok):
    for prompt, response in sft_examples(50, seed=3):
        full = tok.apply_chat_template([{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": response}], tokenize=True)
        full = full["input_ids"] if hasattr(full, "keys") else full
        ids = encode_prompt(tok, prompt) + encode_response(tok, response, prompt)
        assert ids == list(full)
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("text", ["The ocean is calm and soft.", "  spaces  inside ", "café ☕ — naïve", "x"])
def test_response_decodes_losslessly(tok, text):
    ids = encode_response(tok, text)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_default_task_fits_the_length_budget(tok):
    prompts = default_prompts("train") + default_prompts("eval")
    assert max(len(encode_prompt(tok, p)) for p in prompts) <= 24
    assert max(len(encode_response(tok, r)) for _, r in sft_examples()) <= 32


def test_save_and_reload_round_trips(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.chat_template == tok.chat_template
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                            tok.pad_token_id)
    for prompt, response in sft_examples(20, seed=1):
        assert encode_prompt(again, prompt) == encode_prompt(tok, prompt)
        assert encode_response(again, response) == encode_response(tok, response)


def test_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    bare = train_tokenizer(["some text to train on", "more text"], vocab_size=300)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        encode_prompt(bare, "hello")
    with pytest.raises(ValueError, match="message 0 must be"):
        encode_prompt(tok, ["list"])
    with pytest.raises(ValueError, match="prompt must be a non-empty string or a list of chat messages, got int"):
        encode_prompt(tok, 3)
    with pytest.raises(ValueError, match="conversation must be a non-empty list"):
        encode_response(tok, 3)


def test_one_tokenizer_cascade_for_runs_and_eval(tok, tmp_path):
    """resolve_tokenizer (inpo train and inpo eval both use it): an explicit tokenizer folder wins; else the model
    folder's own; else, only when no model folder is named, the default. A model folder without a tokenizer is
    refused (the default's ids would not fit it), naming the caller's argument."""
    from inpo.data.chat import is_plain_text
    from inpo.data.tokenizer import resolve_tokenizer

    small = train_tokenizer(["a b c d e f g"], vocab_size=300)
    (tmp_path / "tok").mkdir()
    small.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "model").mkdir()
    tok.save_pretrained(str(tmp_path / "model"))
    (tmp_path / "bare").mkdir()
    assert len(resolve_tokenizer(tmp_path / "tok", tmp_path / "model")) == len(small)
    assert len(resolve_tokenizer(None, tmp_path / "model")) == len(tok) != len(small)
    assert resolve_tokenizer(None, None).get_vocab() == tok.get_vocab()
    with pytest.raises(ValueError, match=r"--policy '.*bare' has no tokenizer files .*pass --tokenizer DIR"):
        resolve_tokenizer(None, tmp_path / "bare", model_arg="--policy", tokenizer_arg="--tokenizer DIR")
    assert len(resolve_tokenizer(tmp_path / "tok", tmp_path / "bare")) == len(small)  # an explicit one is enough
    assert is_plain_text(resolve_tokenizer(None, None, plain_text=True))
    assert not is_plain_text(resolve_tokenizer(None, None))
