"""Win-rates with bootstrap CIs, model-level evaluation, and the `inpo eval` CLI."""

import json

import numpy as np
import pytest
import torch

from inpo.data.prompts import default_prompts
from inpo.eval import WinRate, bootstrap_ci, evaluate, main, win_rate
from inpo.oracles import SyntheticIntransitiveOracle

PROMPTS = default_prompts("eval", n=40, seed=0)


def _topic(prompt):
    from inpo.data.prompts import prompt_keywords

    return next(iter(prompt_keywords(prompt)))


def _good(prompt, style="calm and soft"):
    return f"The {_topic(prompt)} is {style} in the dusk today."


def _flawed(prompt, i):
    t = _topic(prompt)
    return [f"The {t} is calm and soft in the dusk today", "The city is calm and soft in the dusk today.",
            f"Calm {t}.", f"The {t} is calm calm calm and soft in the dusk."][i % 4]


def test_identical_policy_scores_one_half():
    o = SyntheticIntransitiveOracle()
    ys = [_good(p) if i % 2 else _flawed(p, i) for i, p in enumerate(PROMPTS)]
    r = win_rate(PROMPTS, ys, ys, o)
    assert isinstance(r, WinRate) and r.win_rate == 0.5 and r.ci_low <= 0.5 <= r.ci_high
    assert r.n == 40 and r.queries == 40 == o.queries


def test_clearly_better_policy_has_ci_above_one_half():
    o = SyntheticIntransitiveOracle(mode="sample")
    better = [_good(p) for p in PROMPTS]
    worse = [_flawed(p, i) for i, p in enumerate(PROMPTS)]
    up = win_rate(PROMPTS, better, worse, o)
    assert up.ci_low > 0.5 and up.win_rate > 0.7
    down = win_rate(PROMPTS, worse, better, o, hard=True)  # sampled decisions: the flawed side wins sometimes
    assert down.ci_high < 0.5 and down.win_rate < 0.3
    assert win_rate(PROMPTS, worse, better, SyntheticIntransitiveOracle(), hard=True).win_rate == 0.0


def test_k_responses_per_prompt_and_determinism():
    o = SyntheticIntransitiveOracle()
    a = [[_good(p), _flawed(p, 0)] for p in PROMPTS]
    b = [[_flawed(p, 1), _flawed(p, 2)] for p in PROMPTS]
    r1 = win_rate(PROMPTS, a, b, o, seed=3)
    assert r1 == win_rate(PROMPTS, a, b, SyntheticIntransitiveOracle(), seed=3)
    assert r1.queries == 80
    soft = [(o.prob(x, ya[0], yb[0]) + o.prob(x, ya[1], yb[1])) / 2 for x, ya, yb in zip(PROMPTS, a, b)]
    assert r1.win_rate == pytest.approx(np.mean(soft))


def test_hard_scores_count_ties_as_half():
    o = SyntheticIntransitiveOracle()
    x = PROMPTS[:2]
    r = win_rate(x, [_good(x[0]), _good(x[1])], [_good(x[0]), _flawed(x[1], 0)], o, hard=True)
    assert r.win_rate == pytest.approx((0.5 + 1.0) / 2)


def test_bootstrap_ci():
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)
    rng = np.random.default_rng(0)
    x = rng.random(400)
    lo, hi = bootstrap_ci(x, n_bootstrap=2000, seed=1)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # matches the normal-theory width
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)


@pytest.mark.parametrize("call,match", [
    (lambda o: win_rate([], [], [], o), "empty"),
    (lambda o: win_rate(PROMPTS[:2], ["a"], ["b", "c"], o), "one policy and one baseline"),
    (lambda o: win_rate(PROMPTS[:1], [["a", "b"]], [["c"]], o), "same number"),
    (lambda o: win_rate(PROMPTS[:1], ["a"], ["b"], o, n_bootstrap=0), "n_bootstrap"),
    (lambda o: win_rate(PROMPTS[:1], ["a"], ["b"], "synthetic"), "PreferenceOracle"),
])
def test_win_rate_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(SyntheticIntransitiveOracle())


# --------------------------------------------------------------------------------------- models, CLI

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from inpo.data.tokenizer import default_tokenizer

    root = tmp_path_factory.mktemp("policy")
    tok = default_tokenizer(root / "tok-cache")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "m")
    tok.save_pretrained(root / "m")
    return model, tok, root / "m"


def test_evaluate_same_model_is_exactly_one_half(saved_model):
    model, tok, _ = saved_model
    r, ours, theirs = evaluate(model, model, tok, PROMPTS[:6], SyntheticIntransitiveOracle(), max_new_tokens=5,
                               k=2, return_responses=True)
    assert ours == theirs and len(ours) == 6 and len(ours[0]) == 2
    assert r.win_rate == 0.5 and r.ci_low == r.ci_high == 0.5 and r.queries == 12


def test_cli_writes_table_and_json(saved_model, tmp_path, capsys):
    _, _, path = saved_model
    out = tmp_path / "res" / "wr.json"
    rc = main(["--policy", str(path), "--baseline", str(path), "--n", "5", "--max-new-tokens", "4",
               "--json", str(out)])
    assert rc == 0
    assert "win-rate" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["win_rate"] == 0.5 and rec["n"] == 5 and rec["oracle"] == "synthetic"
    assert "device" in rec["environment"]
    assert [p.name for p in out.parent.iterdir()] == ["wr.json"]  # no temp file left


def test_cli_samples_with_the_configured_backend(saved_model, tmp_path, monkeypatch):
    """`inpo eval` samples with inpo.generation.make_sampler's backend: --sampler, else the policy's run's `sampler`
    setting (its config.yaml), else auto -- one sampler for both models, pointed at the baseline after the policy."""
    import shutil

    import yaml

    import inpo.eval as ev

    seen, real = [], ev.make_sampler

    def spy(backend, model, tokenizer, **kw):
        seen.append(backend)
        sampler = real("hf", model, tokenizer, **kw)  # no vLLM here: the HF backend stands in for every choice
        sampler.set_policy = lambda m, set_policy=sampler.set_policy: (seen.append("set_policy"), set_policy(m))
        return sampler

    monkeypatch.setattr(ev, "make_sampler", spy)
    _, _, path = saved_model
    run = tmp_path / "run"
    shutil.copytree(path, run / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"objective": "inpo", "model": None, "prompts": "default",
                                                     "sampler": "hf"}))
    out = tmp_path / "wr.json"
    args = ["--baseline", str(path), "--n", "2", "--max-new-tokens", "2"]
    assert main(["--policy", str(path), *args]) == 0  # no run around it: auto
    assert main(["--policy", str(path), "--sampler", "vllm", *args]) == 0
    assert main(["--policy", str(run / "final"), *args, "--json", str(out)]) == 0  # its run said hf
    assert seen == ["auto", "set_policy", "vllm", "set_policy", "hf", "set_policy"]
    assert json.loads(out.read_text())["sampler"] == "hf"


@pytest.mark.parametrize("args,match", [
    (["--policy", "/nonexistent/model", "--baseline", "{m}"], "does not exist"),
    (["--policy", "{m}", "--baseline", "{m}", "--oracle", "gpt4"], "valid: synthetic"),
    (["--policy", "{m}", "--baseline", "{m}", "--prompts", "/no/prompts.jsonl"], "prompts file not found"),
    (["--policy", "{m}", "--baseline", "{m}", "--k", "0"], "--k must be >= 1"),
])
def test_cli_errors_are_clear(saved_model, capsys, args, match):
    _, _, path = saved_model
    rc = main([a.replace("{m}", str(path)) for a in args])
    assert rc == 2
    assert match in capsys.readouterr().err


def test_cli_via_the_dispatcher(saved_model, capsys):
    from inpo.cli import main as cli_main

    _, _, path = saved_model
    assert cli_main(["eval", "--policy", str(path), "--baseline", str(path), "--n", "2",
                     "--max-new-tokens", "2"]) == 0


@pytest.mark.slow
def test_cli_default_policy_against_itself(capsys):
    """The embedded π_ref (built and cached by the trainer's code on first use) against itself: exactly ½."""
    assert main(["--policy", "default", "--baseline-default", "--n", "8", "--k", "2"]) == 0
    assert "0.500" in capsys.readouterr().out
