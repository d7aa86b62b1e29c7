"""The LLM-judge oracle (`judge:DIR`): P(A ≻ B) from the judge's next-token logits of the two labels, averaged over
both orders. CPU tier on a tiny local chat model (a random Qwen2 with the ChatML template, tests/hf_fixtures.py);
the `real` tier on SmolLM2-135M-Instruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inpo.oracles import JudgeOracle, make_oracle, select_pairs, tournament_queries
from tests.hf_fixtures import qwen2_dir  # noqa: F401 (fixture)

X = ["What is the capital of France?", "Write a haiku about the ocean.", "What is 7 times 8?"]
A = ["The capital of France is Paris.", "Waves fold on the shore,\nsalt wind carries gull voices,\nblue depth below.",
     "56."]
B = ["Banana.", "I like the sea a lot, it is big and it is blue and wet.", "7 times 8 is 15, I think, or maybe 78."]


TINY = {"labels": ("A", "B"), "answer_prefix": ""}  # the tiny BPE has no " A" token: the labels open the answer


@pytest.fixture(scope="module")
def tiny_judge(qwen2_dir):  # noqa: F811
    return make_oracle(f"judge:{qwen2_dir}", batch_size=2, **TINY)


def _full_forward_prob(judge, text: str) -> float:
    """The unbatched reference: the whole model's logits at the last position, softmax over the two labels."""
    ids = torch.tensor([judge.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        z = judge.model(input_ids=ids).logits[0, -1].double()
    a, b = judge.label_ids
    return float(torch.softmax(z[[a, b]], dim=0)[0])


def test_raw_prob_is_the_last_real_positions_label_softmax(tiny_judge):
    # 6 texts of 3 lengths in batches of 4 (right padding): every row must read its own last real token.
    texts = tiny_judge.judge_texts(X, A, B) + tiny_judge.judge_texts(X, B, A)
    assert len({len(tiny_judge._encode(t)) for t in texts}) == 3
    want = np.array([_full_forward_prob(tiny_judge, t) for t in texts])
    judge = JudgeOracle(tiny_judge.model, tiny_judge.tokenizer, batch_size=4, **TINY)
    got = judge.raw_prob(X + X, A + B, B + A)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    one = JudgeOracle(tiny_judge.model, tiny_judge.tokenizer, batch_size=1, **TINY)
    np.testing.assert_allclose(one.raw_prob(X, A, B), got[:3], rtol=0, atol=1e-6)


def test_averaging_cancels_position_bias(tiny_judge):
    raw_same = tiny_judge.raw_prob(X, A, A)
    assert np.abs(raw_same - 0.5).max() > 1e-3  # the random judge prefers one position ...
    p_ab, p_ba = tiny_judge.prob_batch(X, A, B), tiny_judge.prob_batch(X, B, A)
    np.testing.assert_allclose(p_ab + p_ba, 1.0, rtol=0, atol=1e-6)  # ... the oracle does not
    np.testing.assert_array_equal(tiny_judge.prob_batch(X, A, A), 0.5)
    raw_ab, raw_ba = tiny_judge.raw_prob(X, A, B), tiny_judge.raw_prob(X, B, A)
    np.testing.assert_allclose(p_ab, 0.5 * (raw_ab + 1 - raw_ba), rtol=0, atol=1e-6)


def test_queries_and_forwards_are_counted(tiny_judge):
    tiny_judge.reset_queries()
    f0 = tiny_judge.forwards
    tiny_judge.prob_batch(X, A, B)
    assert tiny_judge.queries == 3 and tiny_judge.forwards - f0 == 6  # one query = both orders
    tiny_judge.prob_batch(X, A, A)  # y vs y: both orders are one text, one forward
    assert tiny_judge.queries == 6 and tiny_judge.forwards - f0 == 9
    tiny_judge.raw_prob(X, A, B)  # uncounted as a query, counted as forwards
    assert tiny_judge.queries == 6 and tiny_judge.forwards - f0 == 12
    tiny_judge.reset_queries()
    groups = [[A[0], B[0], A[1], B[1]], [A[2], B[2], "Paris.", "Lyon."]]
    _, stats = select_pairs(X[:2], groups, tiny_judge, seed=0)
    assert stats["queries"] == tiny_judge.queries == 2 * tournament_queries(4)


def test_long_responses_are_cut(tiny_judge):
    long = " ".join(["ocean"] * 400)
    judge = JudgeOracle(tiny_judge.model, tiny_judge.tokenizer, max_response_tokens=8, **TINY)
    text = judge.judge_texts([X[0]], [long], [A[0]])[0]
    head = judge.tokenizer.decode(judge._encode(long)[:8])
    assert f"[Response A]\n{head}\n\n[Response B]\n{A[0]}\n" in text and 0 < text.count("ocean") < 10


def test_bad_arguments_are_named(tiny_judge, qwen2_dir, tmp_path):  # noqa: F811
    model, tok = tiny_judge.model, tiny_judge.tokenizer
    with pytest.raises(ValueError, match=r"label ' A' is not one token after the judging prompt"):
        JudgeOracle(model, tok)  # the default labels need a tokenizer with a " A" token
    with pytest.raises(ValueError, match=r"label 'Response A' is not one token"):
        JudgeOracle(model, tok, labels=("Response A", "Response B"), answer_prefix="")
    with pytest.raises(ValueError, match="two different non-empty strings"):
        JudgeOracle(model, tok, labels=("A", "A"), answer_prefix="")
    with pytest.raises(ValueError, match=r"template must contain \{b\}"):
        JudgeOracle(model, tok, template="{prompt} {a}", **TINY)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        JudgeOracle(model, tok, batch_size=0, **TINY)
    with pytest.raises(ValueError, match="tokenizer is required"):
        JudgeOracle(model)
    with pytest.raises(FileNotFoundError, match=r"model directory not found: .*a chat model \(the judge\)"):
        make_oracle(f"judge:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match=r"needs a path: 'judge:PATH'"):
        make_oracle("judge:")
    plain = type(tok).from_pretrained(str(qwen2_dir))
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        JudgeOracle(model, plain, **TINY)


# -- the real tier: SmolLM2-135M-Instruct judging its own kind of answers ------------------------------------------

@pytest.fixture(scope="module")
def smol_judge(smollm2_dir):
    return make_oracle("judge:smollm2", batch_size=4)


@pytest.mark.real
def test_real_judge_is_symmetric_and_half_on_identical(smol_judge):
    p_ab, p_ba = smol_judge.prob_batch(X, A, B), smol_judge.prob_batch(X, B, A)
    np.testing.assert_allclose(p_ab + p_ba, 1.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(smol_judge.prob_batch(X, A, A), 0.5)
    np.testing.assert_array_equal(smol_judge.prob_batch(X, B, B), 0.5)
    assert (np.abs(smol_judge.raw_prob(X, A, A) - 0.5) > 0.05).all()  # SmolLM2 has a strong position bias
    assert [smol_judge.tokenizer.decode([i]) for i in smol_judge.label_ids] == [" A", " B"]
    text = smol_judge.judge_texts(X[:1], A[:1], B[:1])[0]
    assert text.endswith("<|im_start|>assistant\nThe better response is Response")


@pytest.mark.real
def test_real_judge_reads_the_last_real_position(smol_judge):
    texts = smol_judge.judge_texts(X, A, B)
    want = np.array([_full_forward_prob(smol_judge, t) for t in texts])
    np.testing.assert_allclose(smol_judge.raw_prob(X, A, B), want, rtol=0, atol=1e-5)
