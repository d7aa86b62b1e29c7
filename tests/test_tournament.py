"""The one best/worst tournament (inpo/oracles/tournament.py): the LM loop's pair selection and the tabular games
play it, so they count the same oracle queries."""

import numpy as np
import pytest

import inpo.games.solvers as solvers
from inpo.oracles import SyntheticIntransitiveOracle, select_pairs
from inpo.oracles.tournament import TIE, best_and_worst, knockout, label_pairs, tournament_queries

PROMPT = "Describe the ocean at dusk."
WORDS = ["today", "again", "now", "here", "still", "too", "always", "anyway", "tonight", "indeed"]


def _distinct_texts(k):
    return [f"The ocean is calm and soft in the dusk {w}." for w in WORDS[:k]]


class _DistinctDraws:
    """A games RNG whose K samples per prompt are distinct responses (as the LM test's texts are)."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def choice(self, n, size, p):
        return np.stack([self.g.permutation(n)[:size[1]] for _ in range(size[0])])

    def random(self, shape):
        return self.g.random(shape)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_lm_loop_and_games_count_the_same_queries(k):
    """select_pairs (the LM loop) and the games' sampled mode make K − 1 + ⌈K/2⌉ queries per prompt over K
    distinct responses: 11 at K = 8 for both (they disagreed, 11 vs 10, before the tournament was shared)."""
    m = 20
    oracle = SyntheticIntransitiveOracle()
    _, stats = select_pairs([PROMPT] * m, [_distinct_texts(k)] * m, oracle, seed=k)
    n = 12
    P = np.random.default_rng(k).uniform(0.1, 0.9, (n, n))
    P = np.triu(P, 1) + np.tril(1 - P.T, -1) + 0.5 * np.eye(n)  # a valid preference matrix, no certain outcome
    games_oracle = solvers._Oracle(P, _DistinctDraws(k))
    W = solvers._sample_pairs(games_oracle, np.full(n, 1.0 / n), prompts=m, k=k, selection="best_worst", budget=None)
    assert stats["queries"] == games_oracle.queries == m * tournament_queries(k)
    assert W.sum() == m  # a labelling comparison of distinct responses never ties in the games
    assert tournament_queries(8) == 11


def test_brackets_find_best_and_worst_and_the_bye_plays_for_last():
    """Under a strict order (lower id wins) the brackets find the extremes; with K odd the bye joins the losers'
    bracket, and when the bye is the champion the first other candidate stands in -- also with repeated
    candidates (the games draw responses with replacement)."""
    def play(a, b):
        return a < b

    players = np.array([[3, 1, 2, 0, 4], [9, 8, 7, 6, 0], [5, 5, 5, 2, 0], [4, 4, 4, 4, 4]])
    best, worst = best_and_worst(players, play)
    assert best.tolist() == [0, 0, 0, 4] and worst.tolist() == [4, 9, 5, 4]
    survivor, first_out = knockout(np.array([[5, 2, 7]]), play, keep_winner=False)
    assert survivor.tolist() == [7] and first_out.tolist() == [[2]]


def test_label_pairs_drops_ties_and_identical_finalists_without_asking():
    asked = []

    def decide(rows):
        asked.extend(rows.tolist())
        return np.array([{0: 1, 2: 0, 3: TIE}[r] for r in rows])

    best, worst = np.array([1, 2, 3, 4]), np.array([9, 2, 8, 7])
    chosen, rejected, kept = label_pairs(best, worst, decide, best == worst)
    assert asked == [0, 2, 3]  # row 1's finalists are identical: no query
    assert kept.tolist() == [True, False, True, False]
    assert (chosen[kept].tolist(), rejected[kept].tolist()) == ([1, 8], [9, 3])


def test_tournament_queries_rejects_fewer_than_two():
    with pytest.raises(ValueError, match="at least 2"):
        tournament_queries(1)
    with pytest.raises(ValueError, match=r"\[groups, K\]"):
        best_and_worst(np.array([[1], [2]]), lambda a, b: a < b)
