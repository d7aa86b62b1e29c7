"""Default prompt sets, SFT demonstrations, and loading user prompt files."""

import json
from collections import Counter

import pytest

from inpo.data.prompts import default_prompts, load_prompts, prompt_keywords, sft_examples, task_spec
from inpo.oracles import SyntheticIntransitiveOracle


def test_splits_are_fixed_disjoint_and_cover_every_combination():
    train, evals = default_prompts("train"), default_prompts("eval")
    spec = task_spec()
    assert not set(train) & set(evals)
    assert len(set(train)) == len(train) and len(set(evals)) == len(evals)
    assert len(train) + len(evals) == len(spec["topics"]) * len(spec["prompt_templates"])
    assert 300 <= len(train) and 50 <= len(evals)
    assert default_prompts("train") == train  # no hidden state


def test_subsets_are_seeded():
    a = default_prompts("eval", n=20, seed=1)
    assert a == default_prompts("eval", n=20, seed=1)
    assert a != default_prompts("eval", n=20, seed=2)
    assert len(set(a)) == 20 and set(a) <= set(default_prompts("eval"))


@pytest.mark.parametrize("kwargs,match", [({"split": "test"}, "split must be one of"),
                                          ({"n": 0}, "positive int"),
                                          ({"n": 10_000}, "exceeds")])
def test_default_prompts_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        default_prompts(**kwargs)


def test_every_default_prompt_has_exactly_its_topic_as_keyword():
    topics = set(task_spec()["topics"])
    for prompt in default_prompts("train") + default_prompts("eval"):
        keys = prompt_keywords(prompt)
        assert len(keys) == 1 and keys <= topics, prompt


def test_sft_examples_are_deterministic_and_diverse():
    ex = sft_examples(600, seed=0)
    assert ex == sft_examples(600, seed=0) and ex != sft_examples(600, seed=1)
    assert {p for p, _ in ex} <= set(default_prompts("train"))
    oracle = SyntheticIntransitiveOracle()
    feats = [oracle.features(p, r) for p, r in ex]
    perfect = sum(f["quality"] == 1.0 for f in feats) / len(feats)
    assert 0.15 < perfect < 0.7  # room to improve, yet a good share to imitate
    for check in ("on_topic", "ending", "length", "variety"):
        assert 0.05 < sum(f[check] < 1 for f in feats) / len(feats) < 0.6, check
    styles = Counter(f["style"] for f in feats)
    assert all(styles[s] > 0.2 * len(ex) for s in ("rock", "paper", "scissors"))


def test_load_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("Describe the sea.\n\n  Tell me a joke.  \n")
    assert load_prompts(txt) == ["Describe the sea.", "Tell me a joke."]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "A?", "extra": 1}) + "\n\n" + json.dumps({"prompt": "B?"}) + "\n")
    assert load_prompts(jl) == ["A?", "B?"]


@pytest.mark.parametrize("body,match", [
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', r"p\.jsonl:2: record has no 'prompt' field"),
    ('{"prompt": "ok"}\nnot json\n', r"p\.jsonl:2: invalid JSON"),
    ('{"prompt": 5}\n', r"p\.jsonl:1: 'prompt' must be a non-empty string"),
    ("\n\n", "contains no prompts"),
])
def test_load_jsonl_errors_name_file_and_line(tmp_path, body, match):
    path = tmp_path / "p.jsonl"
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
        load_prompts(path)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_prompts(tmp_path / "p.csv")
