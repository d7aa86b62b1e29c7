"""Preference oracles: the synthetic intransitive task's properties, model-backed oracles on tiny
checkpoints built here, pair selection with exact query counts, and win-rate targets."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inpo.oracles import (PairwiseModelOracle, PreferenceOracle, RewardModelOracle, SyntheticIntransitiveOracle,
                          estimate_win_rates, make_oracle, select_pairs, tournament_queries)
from inpo.oracles.synthetic import LENGTH_BAND

X = "Describe the ocean."
GOOD = {"rock": "The ocean is heavy and solid in the dusk today.",          # 10 words: inside the band
        "paper": "The ocean is calm and soft in the dusk today.",
        "scissors": "The ocean is sharp and quick in the dusk today."}
# One flaw each, all in the paper style so only quality differs.
FLAWED = ["The city is calm and soft in the dusk today.",         # off topic
          "The ocean is calm and soft in the dusk today",          # no ending
          "The ocean is calm calm calm and soft in the dusk.",     # repetition
          "Calm ocean.",                                           # too short
          "The ocean is calm and soft today, and the ocean is gentle, quiet and soft in the dusk."]  # too long
MIXED = list(GOOD.values()) + FLAWED + ["", "Bright wind.", "The ocean is green and warm."]


@pytest.fixture()
def oracle():
    return SyntheticIntransitiveOracle()


def _matrix(o, x, ys):
    a, b = zip(*itertools.product(ys, ys))
    return o.prob_batch([x] * len(a), list(a), list(b)).reshape(len(ys), len(ys))


# ------------------------------------------------------------------------------------------ synthetic

def test_probability_matrix_is_a_valid_game(oracle):
    p = _matrix(oracle, X, MIXED)
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-15)
    np.testing.assert_array_equal(np.diag(p), 0.5)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
def test_swap_symmetry_on_arbitrary_text(a, b, x):
    o = SyntheticIntransitiveOracle(alpha=3.0, beta=2.0)
    assert o.prob(x, a, b) + o.prob(x, b, a) == pytest.approx(1.0, abs=1e-15)
    assert o.prob(x, a, a) == 0.5


def test_rock_paper_scissors_cycle_among_equal_quality(oracle):
    assert {oracle.style(y) for y in GOOD.values()} == {"rock", "paper", "scissors"}
    assert len({oracle.quality(X, y) for y in GOOD.values()}) == 1
    r, p, s = GOOD["rock"], GOOD["paper"], GOOD["scissors"]
    # a strict cycle: no Bradley–Terry score can order these three
    assert oracle.prob(X, r, s) > 0.5 and oracle.prob(X, s, p) > 0.5 and oracle.prob(X, p, r) > 0.5
    assert oracle.prob(X, r, s) == pytest.approx(1 / (1 + math.exp(-oracle.beta)))


def test_every_flaw_lowers_quality_and_loses(oracle):
    good = GOOD["paper"]
    assert oracle.quality(X, good) == 1.0
    for y in FLAWED:
        assert oracle.quality(X, y) < 1.0, y
        assert oracle.prob(X, good, y) > 0.5, y
    assert oracle.quality(X, "") == 0.0
    drifting = "The ocean and the city are calm and soft in the dusk."
    assert oracle.features(X, drifting)["on_topic"] == 0.5
    assert oracle.prob(X, good, drifting) > 0.5 > oracle.prob(X, FLAWED[0], drifting)


def test_quality_monotone_in_each_check(oracle):
    # stacking flaws strictly lowers quality
    seq = ["The ocean is calm and soft in the dusk today.", "The ocean is calm and soft in the dusk today",
           "The ocean is calm calm and soft in the dusk today", "The city is calm calm and soft in the dusk today",
           "City calm calm"]
    qs = [oracle.quality(X, y) for y in seq]
    assert all(a > b for a, b in zip(qs, qs[1:])), qs
    # length: the further outside the band, the lower
    def of_length(n):
        return "ocean " + " ".join(f"w{c}" for c in "abcdefghijklmnopqrstuvwxyz"[:n - 1]) + "."

    lo, hi = LENGTH_BAND
    q = {n: oracle.quality(X, of_length(n)) for n in range(1, 22)}
    assert q[lo] == q[hi] == 1.0
    assert all(q[n] < q[n + 1] for n in range(lo - 6, lo))  # rising up to the band
    assert all(q[n] > q[n + 1] for n in range(hi, hi + 6))  # falling beyond it
    assert oracle.features(X, of_length(lo - 3))["length"] == pytest.approx(0.5)


def test_alpha_and_beta_scale_the_logit():
    strong = SyntheticIntransitiveOracle(alpha=16.0)
    weak = SyntheticIntransitiveOracle(alpha=2.0)
    y = FLAWED[1]
    assert strong.prob(X, GOOD["paper"], y) > weak.prob(X, GOOD["paper"], y) > 0.5
    transitive = SyntheticIntransitiveOracle(beta=0.0)
    assert transitive.prob(X, GOOD["rock"], GOOD["scissors"]) == 0.5


def test_modes_and_query_counting(oracle):
    assert oracle.queries == 0
    oracle.prob(X, GOOD["rock"], GOOD["paper"])
    oracle.prob_batch([X] * 5, MIXED[:5], MIXED[5:10])
    assert oracle.prefer(X, GOOD["rock"], GOOD["scissors"]) == 1
    assert oracle.prefer(X, GOOD["rock"], GOOD["rock"]) == -1  # deterministic mode: exact ½ is a tie
    assert oracle.queries == 1 + 5 + 2
    assert oracle.reset_queries() == 8 and oracle.queries == 0

    sampler = SyntheticIntransitiveOracle(mode="sample")
    p = sampler.prob(X, GOOD["rock"], GOOD["scissors"])
    wins = sampler.prefer_batch([X] * 4000, [GOOD["rock"]] * 4000, [GOOD["scissors"]] * 4000,
                                np.random.default_rng(0))
    assert set(np.unique(wins)) <= {0, 1}
    assert abs(wins.mean() - p) < 4 * math.sqrt(p * (1 - p) / 4000)
    again = sampler.prefer_batch([X] * 50, [GOOD["rock"]] * 50, [GOOD["scissors"]] * 50, np.random.default_rng(0))
    np.testing.assert_array_equal(again, wins[:50])


def test_oracle_argument_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        SyntheticIntransitiveOracle(mode="greedy")
    with pytest.raises(ValueError, match="alpha must be"):
        SyntheticIntransitiveOracle(alpha=-1)
    with pytest.raises(ValueError, match="same length"):
        SyntheticIntransitiveOracle().prob_batch([X], ["a", "b"], ["c"])
    with pytest.raises(TypeError, match="list of str"):
        SyntheticIntransitiveOracle().prob_batch(X, "a", "b")


def test_make_oracle_specs(tmp_path):
    o = make_oracle("synthetic:alpha=4,beta=2,mode=sample", seed=3)
    assert isinstance(o, SyntheticIntransitiveOracle) and (o.alpha, o.beta, o.mode) == (4.0, 2.0, "sample")
    with pytest.raises(ValueError, match=r"valid: synthetic, format, reward:PATH, pairwise:PATH, judge:PATH"):
        make_oracle("gpt4")
    with pytest.raises(ValueError, match="needs a path"):
        make_oracle("reward:")
    with pytest.raises(ValueError, match="bad synthetic oracle option"):
        make_oracle("synthetic:gamma=1")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        make_oracle(f"pairwise:{tmp_path / 'nope'}")


# -------------------------------------------------------------------------------------- pair selection

def _distinct(k):
    return [f"The ocean is calm and soft in the dusk {w}." for w in ["today", "again", "now", "here", "still", "too", "always",
                                                        "anyway", "tonight", "indeed"][:k]]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7, 8])
def test_tournament_query_count_is_exact(oracle, k):
    prompts = [X] * 4
    groups = [MIXED[i:i + k] if len(MIXED[i:i + k]) == k else _distinct(k) for i in range(4)]
    pairs, stats = select_pairs(prompts, groups, oracle, seed=k)
    assert stats["queries"] == oracle.queries == 4 * tournament_queries(k)
    assert stats["pairs"] + stats["ties_dropped"] == 4 == stats["prompts"]
    assert tournament_queries(8) == 11  # 7 for the winner + 4 more for the loser, as in the INPO paper


def test_tournament_finds_best_and_worst_under_a_transitive_oracle():
    o = SyntheticIntransitiveOracle(beta=0.0)  # quality only: a total order
    ys = [GOOD["paper"]] + FLAWED[:3] + ["", "Calm ocean."]
    q = {y: o.quality(X, y) for y in ys}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        groups = [list(rng.permutation(ys)) for _ in range(3)]
        pairs, stats = select_pairs([X] * 3, groups, o, seed=seed)
        assert stats["pairs"] == 3
        for pair in pairs:
            assert q[pair.chosen] == max(q.values()) and q[pair.rejected] == min(q.values())


def test_ties_and_identical_responses_are_dropped(oracle):
    same = [GOOD["paper"]] * 4
    equal_quality_same_style = [GOOD["paper"], "The ocean is soft and calm in the dusk today."]
    pairs, stats = select_pairs([X, X, X], [same, equal_quality_same_style, [GOOD["rock"], FLAWED[0]]], oracle)
    assert [p.prompt_index for p in pairs] == [2]
    assert pairs[0].chosen == GOOD["rock"] and pairs[0].rejected == FLAWED[0] and pairs[0].prompt == X
    assert stats["ties_dropped"] == 2 and stats["identical"] == 1


def test_random_strategy_costs_one_query_per_prompt(oracle):
    groups = [MIXED[:6], MIXED[3:9], ["same", "same"]]
    pairs, stats = select_pairs([X] * 3, groups, oracle, strategy="random", seed=0)
    assert stats["queries"] == 2  # the all-identical prompt costs nothing
    again, _ = select_pairs([X] * 3, groups, SyntheticIntransitiveOracle(), strategy="random", seed=0)
    assert pairs == again
    for pair in pairs:
        assert oracle.prob(pair.prompt, pair.chosen, pair.rejected) > 0.5


def test_select_pairs_errors(oracle):
    with pytest.raises(ValueError, match="strategy must be one of"):
        select_pairs([X], [MIXED[:2]], oracle, strategy="best")
    with pytest.raises(ValueError, match="same length"):
        select_pairs([X, X], [MIXED[:2]], oracle)
    with pytest.raises(ValueError, match="at least 2"):
        select_pairs([X], [MIXED[:1]], oracle)
    with pytest.raises(TypeError, match="PreferenceOracle"):
        select_pairs([X], [MIXED[:2]], object())


def test_estimate_win_rates_matches_brute_force(oracle):
    groups = [MIXED[:5], MIXED[5:9]]
    rates = estimate_win_rates([X, X], groups, oracle)
    assert oracle.queries == 5 * 4 // 2 + 4 * 3 // 2
    for g, r in zip(groups, rates):
        k = len(g)
        brute = [np.mean([oracle.prob(X, g[i], g[j]) for j in range(k) if j != i]) for i in range(k)]
        np.testing.assert_allclose(r, brute, atol=1e-12)
        assert np.mean(r) == pytest.approx(0.5)  # a constant-sum game averages to ½


# --------------------------------------------------------------------------------- model-backed oracles

def _tiny_classifier(tmp_path, num_labels, seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from inpo.data.tokenizer import default_tokenizer

    tok = default_tokenizer(tmp_path / "tok-cache")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      num_labels=num_labels, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # the default init gives a near-zero score head; make rewards spread out
        model.score.weight.normal_(0, 2.0)
    path = tmp_path / f"cls{num_labels}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_oracle_on_a_local_checkpoint(tmp_path):
    path = _tiny_classifier(tmp_path, num_labels=1)
    rm = make_oracle(f"reward:{path}")
    assert isinstance(rm, RewardModelOracle)
    ys = MIXED[:6]
    r = rm.score([X] * 6, ys)
    assert r.shape == (6,) and np.all(np.isfinite(r)) and np.ptp(r) > 1e-3
    one_by_one = RewardModelOracle(path, batch_size=1).score([X] * 6, ys)
    np.testing.assert_allclose(r, one_by_one, atol=1e-5)  # padding does not change a score
    assert rm.queries == 6  # a reward model is queried once per response it scores
    assert rm.prob(X, ys[0], ys[1]) == pytest.approx(1 / (1 + math.exp(-(r[0] - r[1]))), abs=1e-6)
    assert rm.queries == 8  # a compared pair costs its two responses' scores
    rm.reset_queries()
    scored = rm.scored
    pairs, stats = select_pairs([X, X], [ys, ys[::-1]], rm)
    assert stats["queries"] == 12 == rm.queries and stats["scored"] == 12 and rm.scored - scored == 12
    best, worst = ys[int(np.argmax(r))], ys[int(np.argmin(r))]
    assert [(p.chosen, p.rejected) for p in pairs] == [(best, worst)] * 2
    w = estimate_win_rates([X], [ys], rm)[0]
    assert np.argmax(w) == np.argmax(r) and rm.queries == 12 + 6


def test_pairwise_model_oracle_is_symmetrised(tmp_path):
    path = _tiny_classifier(tmp_path, num_labels=1, seed=1)
    pm = make_oracle(f"pairwise:{path}")
    assert isinstance(pm, PairwiseModelOracle)
    ys = MIXED[:4]
    p = _matrix(pm, X, ys)
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(p), 0.5, atol=1e-12)
    raw_ab = pm.raw_prob([X], [ys[0]], [ys[1]])[0]
    raw_ba = pm.raw_prob([X], [ys[1]], [ys[0]])[0]
    assert abs(raw_ab + raw_ba - 1) > 1e-6  # the raw model has position bias ...
    assert p[0, 1] == pytest.approx(0.5 * (raw_ab + 1 - raw_ba))  # ... the oracle removes it
    pm.reset_queries()
    _, stats = select_pairs([X], [MIXED[:8]], pm)
    assert stats["queries"] == pm.queries == 11


def test_two_label_pairwise_and_label_errors(tmp_path):
    two = _tiny_classifier(tmp_path, num_labels=2)
    pm = PairwiseModelOracle(two, a_wins_label=1)
    assert pm.prob(X, MIXED[0], MIXED[1]) + pm.prob(X, MIXED[1], MIXED[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_labels == 1"):
        RewardModelOracle(two)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        RewardModelOracle(tmp_path / "empty")


def test_base_class_is_the_protocol():
    class Coin(PreferenceOracle):
        def _probs(self, prompts, a, b):
            return np.full(len(a), 0.5)

    o = Coin()
    assert o.prefer("x", "a", "b") == -1 and o.queries == 1


def test_tournament_winners_beat_the_sft_distribution():
    """The default task has a learnable signal: best-of-8 picks among SFT-like responses clearly beat a
    fresh SFT-like response, and the rejected picks clearly lose (what INPO's pairs push towards/away from)."""
    import random

    from inpo.data.prompts import _response, _topic_of, default_prompts, task_spec
    from inpo.eval import win_rate

    rng = random.Random(0)
    topics = task_spec()["topics"]
    prompts = default_prompts("train", n=60, seed=0)
    groups = [[_response(_topic_of(x, topics), rng) for _ in range(8)] for x in prompts]
    fresh = [_response(_topic_of(x, topics), rng) for x in prompts]
    o = SyntheticIntransitiveOracle()
    pairs, stats = select_pairs(prompts, groups, o, seed=0)
    assert stats["pairs"] >= 50
    idx = [p.prompt_index for p in pairs]
    up = win_rate([prompts[i] for i in idx], [p.chosen for p in pairs], [fresh[i] for i in idx], o)
    down = win_rate([prompts[i] for i in idx], [p.rejected for p in pairs], [fresh[i] for i in idx], o)
    assert up.ci_low > 0.6 and down.ci_high < 0.4, (up, down)
