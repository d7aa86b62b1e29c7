"""From K sampled responses per prompt to training signal: chosen/rejected pairs and win-rate targets.

``select_pairs`` with ``strategy="best_worst"``:

* a :class:`~inpo.oracles.models.RewardModelOracle` scores the K responses (K forwards: K queries, no
  pairwise comparison) and pairs the argmax with the argmin;
* any other oracle runs the counted best/worst tournament of :mod:`inpo.oracles.tournament` (shared with the
  tabular games) on the K responses in a seeded random order: K − 1 + ⌈K/2⌉ queries per prompt, 11 for K = 8,
  as in the INPO paper (7 + 4); the last one labels the pair afresh and drops it when it is a tie. A tie inside
  a bracket is settled by a fair coin from the seeded RNG.

``"random"`` compares one random pair of distinct responses (one query). Pairs whose two responses
are the same text are dropped without a final query (``stats["identical"]``); ties and identical
pairs both count in ``stats["ties_dropped"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inpo.oracles.base import TIE, PreferenceOracle
from inpo.oracles.models import RewardModelOracle
from inpo.oracles.tournament import best_and_worst, label_pairs, tournament_queries

__all__ = ["Pair", "select_pairs", "estimate_win_rates", "tournament_queries", "STRATEGIES"]

STRATEGIES = ("best_worst", "random")


@dataclass(frozen=True)
class Pair:
    """One preference pair: ``chosen`` ≻ ``rejected`` for ``prompt`` (``prompts[prompt_index]``)."""

    prompt: str
    chosen: str
    rejected: str
    prompt_index: int


def _check(prompts: Sequence[str], responses: Sequence[Sequence[str]], min_k: int = 2) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length (one list of K responses per prompt), "
                         f"got {len(prompts)} prompts and {len(responses)} response lists")
    for i, group in enumerate(responses):
        if isinstance(group, str) or len(group) < min_k:
            raise ValueError(f"responses[{i}] must be a list of at least {min_k} responses, got {group!r:.80}")


def _matches(oracle: PreferenceOracle, prompts, pairs: list[tuple[int, int, int]], groups, rng) -> np.ndarray:
    """Play ``(prompt_index, i, j)`` matches in one batch; returns 1 where i wins, 0 where j wins."""
    if not pairs:
        return np.zeros(0, dtype=np.int64)
    out = oracle.prefer_batch([prompts[p] for p, _, _ in pairs], [groups[p][i] for p, i, _ in pairs],
                              [groups[p][j] for p, _, j in pairs], rng)
    ties = out == TIE
    out[ties] = rng.integers(0, 2, size=int(ties.sum()))  # a bracket must advance someone
    return out


def _tournament_finalists(oracle, prompts, groups, rng) -> list[tuple[int, int, int]]:
    """(prompt index, best, worst) per prompt from the shared tournament, in a seeded random order per prompt
    (no position bias from the sampler); one lock-step bracket per group size, one oracle batch per round."""
    orders = [rng.permutation(len(g)) for g in groups]
    finalists = []
    for size in sorted({len(g) for g in groups}):
        rows = [p for p, g in enumerate(groups) if len(g) == size]

        def play(a, b, rows=rows):
            pairs = [(rows[r], int(a[r, c]), int(b[r, c])) for r in range(a.shape[0]) for c in range(a.shape[1])]
            return _matches(oracle, prompts, pairs, groups, rng).reshape(a.shape) == 1

        best, worst = best_and_worst(np.stack([orders[p] for p in rows]), play)
        finalists += [(p, int(i), int(j)) for p, i, j in zip(rows, best, worst)]
    return sorted(finalists)


def _random_finalists(groups, rng) -> list[tuple[int, int, int]]:
    finalists = []
    for p, g in enumerate(groups):
        distinct = sorted({y: i for i, y in reversed(list(enumerate(g)))}.values())  # first index per text
        if len(distinct) >= 2:
            i, j = rng.choice(distinct, size=2, replace=False)
            finalists.append((p, int(i), int(j)))
    return finalists


def _reward_pairs(oracle: RewardModelOracle, prompts, groups) -> tuple[list, int, int]:
    """(pairs of the argmax and argmin response, responses scored, prompts whose responses all scored the same)."""
    flat_p = [prompts[p] for p, g in enumerate(groups) for _ in g]
    scores = oracle.score(flat_p, [y for g in groups for y in g])
    pairs, ties, start = [], 0, 0
    for p, g in enumerate(groups):
        s = scores[start:start + len(g)]
        start += len(g)
        best, worst = int(np.argmax(s)), int(np.argmin(s))
        if s[best] - s[worst] > oracle.tie_tol:
            pairs.append((p, best, worst))
        else:  # every response scored the same: nothing to learn from this prompt
            ties += 1
    return pairs, len(flat_p), ties


def _labelled(oracle, prompts, groups, finalists, rng) -> tuple[list[Pair], int, int]:
    """The final, labelling comparison of each finalist pair (a fresh query, independent of the selection):
    (pairs, identical texts dropped without a query, ties dropped)."""
    if not finalists:
        return [], 0, 0
    p_idx, best, worst = (np.array(col) for col in zip(*finalists))
    identical = np.array([groups[p][i] == groups[p][j] for p, i, j in finalists])

    def decide(rows):
        return oracle.prefer_batch([prompts[p_idx[r]] for r in rows], [groups[p_idx[r]][best[r]] for r in rows],
                                   [groups[p_idx[r]][worst[r]] for r in rows], rng)

    chosen, rejected, kept = label_pairs(best, worst, decide, identical)
    pairs = [Pair(prompts[p], groups[p][c], groups[p][r], int(p)) for p, c, r, k in zip(p_idx, chosen, rejected, kept)
             if k]
    return pairs, int(identical.sum()), int((~kept).sum() - identical.sum())


def select_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]], oracle: PreferenceOracle, *,
                 strategy: str = "best_worst", seed: int = 0) -> tuple[list[Pair], dict]:
    """Chosen/rejected pairs (at most one per prompt) and ``stats`` (queries, ties_dropped, pairs, ...).

    ``stats["queries"]`` is the number of oracle queries this call made (``oracle.queries`` grows by the same
    amount): pairwise comparisons, or for a reward model the responses it scored (also ``stats["scored"]``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(oracle, PreferenceOracle):
        raise TypeError(f"oracle must be a PreferenceOracle, got {type(oracle).__name__}")
    _check(prompts, responses)
    rng = np.random.default_rng(seed)
    groups = [list(g) for g in responses]
    q0 = oracle.queries
    scored = rm_ties = identical = ties = 0
    if strategy == "best_worst" and isinstance(oracle, RewardModelOracle):
        finalists, scored, rm_ties = _reward_pairs(oracle, prompts, groups)
        identical = sum(groups[p][i] == groups[p][j] for p, i, j in finalists)
        pairs = [Pair(prompts[p], groups[p][i], groups[p][j], p) for p, i, j in finalists
                 if groups[p][i] != groups[p][j]]
    else:
        finalists = (_random_finalists(groups, rng) if strategy == "random" else
                     _tournament_finalists(oracle, prompts, groups, rng))
        pairs, identical, ties = _labelled(oracle, prompts, groups, finalists, rng)
    pairs.sort(key=lambda pair: pair.prompt_index)
    stats = {"queries": oracle.queries - q0, "ties_dropped": ties + rm_ties + identical, "identical": identical,
             "pairs": len(pairs), "prompts": len(groups), "scored": scored, "strategy": strategy}
    return pairs, stats


def _reward_matrices(prompts, groups, oracle: RewardModelOracle) -> list[np.ndarray]:
    """Per prompt the [K, K] Bradley–Terry matrix σ(r_i − r_j) of a reward model's K scores."""
    flat = oracle.score([prompts[p] for p, g in enumerate(groups) for _ in g], [y for g in groups for y in g])
    bounds = np.cumsum([0] + [len(g) for g in groups])
    scores = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :]))) for r in scores]


def _pairwise_matrices(prompts, groups, oracle: PreferenceOracle) -> list[np.ndarray]:
    """Per prompt the [K, K] matrix of P(y_i ≻ y_j) from K(K−1)/2 queries (P(y_j ≻ y_i) = 1 − P(y_i ≻ y_j))."""
    idx = [(p, i, j) for p, g in enumerate(groups) for i in range(len(g)) for j in range(i + 1, len(g))]
    probs = oracle.prob_batch([prompts[p] for p, _, _ in idx], [groups[p][i] for p, i, _ in idx],
                              [groups[p][j] for p, _, j in idx])
    mats = [np.full((len(g), len(g)), 0.5) for g in groups]
    for (p, i, j), v in zip(idx, probs):
        mats[p][i, j], mats[p][j, i] = v, 1.0 - v
    return mats


def estimate_win_rates(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                       oracle: PreferenceOracle) -> list[list[float]]:
    """P̂(y_k ≻ π_t) = mean over the other K − 1 samples of P(y_k ≻ y_j), per prompt (SPPO's targets).

    A pairwise oracle is asked K(K−1)/2 times per prompt (``P(y_j ≻ y_k) = 1 − P(y_k ≻ y_j)``);
    a reward model scores K responses and uses Bradley–Terry.
    """
    _check(prompts, responses)
    out = []
    groups = [list(g) for g in responses]
    matrices = (_reward_matrices if isinstance(oracle, RewardModelOracle) else _pairwise_matrices)(prompts, groups,
                                                                                                   oracle)
    for m in matrices:
        k = m.shape[0]
        out.append([float((m[i].sum() - m[i, i]) / (k - 1)) for i in range(k)])
    return out
