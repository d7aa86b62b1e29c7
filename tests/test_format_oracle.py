"""The format oracle (`--oracle format`): response formats read off the layout, a rock-paper-scissors cycle over them,
and a quality term whose every check a reader can see (`features`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inpo.exploitability import exploitability
from inpo.oracles import FormatOracle, make_oracle
from inpo.oracles.formats import LENGTH_BAND, prompt_topic_words, response_format

X = "Give me some tips for keeping houseplants healthy."
# Three answers of equal quality (all checks 1), one per format.
LIST = "Healthy houseplants need care:\n1. Water the plants when the soil is dry.\n2. Give them bright, indirect light."
PARAS = ("Water houseplants only when the soil feels dry to the touch.\n\n"
         "Give the plants bright, indirect light to stay healthy.")
SINGLE = "Water houseplants when the soil feels dry, and give the plants bright, indirect light to keep them healthy."
GOOD = {"list": LIST, "paragraphs": PARAS, "single": SINGLE}


@pytest.fixture()
def oracle():
    return FormatOracle()


def test_formats_are_read_off_the_layout():
    assert response_format(LIST) == "list"
    assert response_format("- one thing\n- another thing") == "list"
    assert response_format("Intro.\n\n1) first\n2) second\n\nOutro.") == "list"  # items win over blocks
    assert response_format("1. only one item") == "single"
    assert response_format(PARAS) == "paragraphs"
    assert response_format("First block.\n  \n\nSecond block.") == "paragraphs"
    assert response_format("One line.\nAnother line, no blank between.") == "single"
    assert response_format("") is None and response_format(" \n\n- ") is None


def test_format_cycle_among_equal_quality(oracle):
    assert {f: oracle.quality(X, y) for f, y in GOOD.items()} == dict.fromkeys(GOOD, 1.0)
    l, p, s = LIST, PARAS, SINGLE
    assert oracle.prob(X, l, p) > 0.5 and oracle.prob(X, p, s) > 0.5 and oracle.prob(X, s, l) > 0.5
    assert oracle.logit(X, l, p) == pytest.approx(oracle.beta)
    assert FormatOracle(beta=0).prob(X, l, p) == 0.5


@pytest.mark.parametrize("check, flawed", [
    ("complete", SINGLE[:-1] + " and then"),                                       # cut off by the token budget
    ("length", "Water them."),                                                     # too short
    ("length", SINGLE + " " + " ".join(f"Also tip {i}, water plant number {i} with care." for i in range(12))),
    ("variety", "Water the plants when dry. " * 4 + "Give houseplants light."),    # a loop
    ("on_topic", "Buy a new car when the old one breaks, and keep the receipt safe."),
])
def test_each_check_lowers_quality_and_loses(oracle, check, flawed):
    f = oracle.features(X, flawed)
    assert f[check] < 1.0 and f["quality"] < 1.0
    assert oracle.features(X, SINGLE)[check] == 1.0
    same_format = GOOD[f["style"]]
    assert oracle.prob(X, same_format, flawed) > 0.5


def test_length_band_edges(oracle):
    lo, hi = LENGTH_BAND
    say = lambda n: " ".join(["houseplants"] + [f"w{i}" for i in range(n - 1)]) + "."  # noqa: E731
    assert oracle.features(X, say(lo))["length"] == 1.0 and oracle.features(X, say(hi))["length"] == 1.0
    assert oracle.features(X, say(lo // 2))["length"] == pytest.approx((lo // 2) / lo)
    assert oracle.features(X, say(hi + hi // 2))["length"] == pytest.approx(0.5)
    assert oracle.features(X, say(2 * hi))["length"] == 0.0


def test_topic_words_skip_instructions():
    assert prompt_topic_words(X) == {"keeping", "houseplant", "healthy"}
    assert prompt_topic_words("Explain why the leaves change color.") == {"leave", "change", "color"}


def test_valid_game_and_options(oracle):
    ys = list(GOOD.values()) + ["", "Water.", SINGLE[:-1]]
    a, b = zip(*itertools.product(ys, ys))
    p = oracle.prob_batch([X] * len(a), list(a), list(b)).reshape(len(ys), len(ys))
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-15)
    np.testing.assert_array_equal(np.diag(p), 0.5)
    o = make_oracle("format:alpha=4,beta=1,none_penalty=0,mode=sample", seed=2)
    assert isinstance(o, FormatOracle) and (o.alpha, o.beta, o.none_penalty, o.mode) == (4.0, 1.0, 0.0, "sample")
    with pytest.raises(ValueError, match="bad format oracle option 'gamma=1'"):
        make_oracle("format:gamma=1")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=20))
def test_swap_symmetry_on_arbitrary_text(a, b, x):
    o = FormatOracle()
    assert o.prob(x, a, b) + o.prob(x, b, a) == pytest.approx(1.0, abs=1e-15)
    assert o.prob(x, a, a) == 0.5


def test_feature_space_best_response(oracle):
    # Only lists: the best challenger is a top-quality single block (single ≻ list), beating each with σ(α(1−q)+β).
    ys = [LIST, "1. Water.\n2. Light."]
    m = oracle.feature_matrix(X, ys)
    q = np.array([oracle.quality(X, y) for y in ys])
    np.testing.assert_allclose(m[2], 1 / (1 + np.exp(-(oracle.alpha * (1 - q) + oracle.beta))))
    e = exploitability(oracle, [X], [ys], kind="feature", n_bootstrap=10)
    assert e.value == pytest.approx(2 * m[2].mean() - 1)
