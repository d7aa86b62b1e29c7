"""From K sampled responses per prompt to training signal: chosen/rejected pairs and win-rate targets.

``select_pairs`` with ``strategy="best_worst"``:

* a :class:`~inpo.oracles.models.RewardModelOracle` scores the K responses (K forwards: K queries, no
  pairwise comparison) and pairs the argmax with the argmin;
* any other oracle runs a counted tournament on the K responses (in a seeded random order):

  1. a knockout for the winner: K − 1 comparisons;
  2. a knockout among the first round's losers (plus the first round's bye when K is odd — the worst
     response, if preferences are transitive, never won a first-round match), where the *loser* of
     each match advances: ⌈K/2⌉ − 1 comparisons;
  3. one fresh comparison of the two finalists, which labels the pair (so the label is an unbiased
     draw, independent of the selection) and drops it when it is a tie.

  That is K − 1 + ⌈K/2⌉ queries per prompt: 11 for K = 8, as in the INPO paper (7 + 4). A tie inside
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

__all__ = ["Pair", "select_pairs", "estimate_win_rates", "tournament_queries", "STRATEGIES"]

STRATEGIES = ("best_worst", "random")


@dataclass(frozen=True)
class Pair:
    """One preference pair: ``chosen`` ≻ ``rejected`` for ``prompt`` (``prompts[prompt_index]``)."""

    prompt: str
    chosen: str
    rejected: str
    prompt_index: int


def tournament_queries(k: int) -> int:
    """Pairwise queries the best/worst tournament makes for ``k`` distinct responses: K − 1 + ⌈K/2⌉."""
    if k < 2:
        raise ValueError(f"a tournament needs at least 2 responses, got {k}")
    return k - 1 + (k + 1) // 2


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


def _knockout(oracle, prompts, groups, entrants: list[list[int]], rng, *, keep_winner: bool):
    """Knockout brackets for all prompts in lock-step rounds (one batched oracle call per round).

    Returns per prompt the survivor, the first round's losers and the first round's bye (or None).
    ``keep_winner=False`` advances the loser of each match instead (to find the worst).
    """
    alive = [list(e) for e in entrants]
    first_losers: list[list[int]] = [[] for _ in entrants]
    byes: list[int | None] = [e[-1] if len(e) % 2 else None for e in entrants]
    first = True
    while any(len(a) > 1 for a in alive):
        pairs = [(p, a[m], a[m + 1]) for p, a in enumerate(alive) for m in range(0, len(a) - 1, 2)]
        won = _matches(oracle, prompts, pairs, groups, rng)
        nxt: list[list[int]] = [[] for _ in alive]
        for (p, i, j), w in zip(pairs, won):
            winner, loser = (i, j) if w == 1 else (j, i)
            nxt[p].append(winner if keep_winner else loser)
            if first:
                first_losers[p].append(loser)
        for p, a in enumerate(alive):
            if len(a) % 2:
                nxt[p].append(a[-1])
            if len(a) == 1:
                nxt[p] = a
        alive, first = nxt, False
    return [a[0] for a in alive], first_losers, byes


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
    scored = rm_ties = 0
    finalists: list[tuple[int, int, int]] = []  # (prompt_index, best, worst)

    if strategy == "random":
        for p, g in enumerate(groups):
            distinct = sorted({y: i for i, y in reversed(list(enumerate(g)))}.values())  # first index per text
            if len(distinct) >= 2:
                i, j = rng.choice(distinct, size=2, replace=False)
                finalists.append((p, int(i), int(j)))
    elif isinstance(oracle, RewardModelOracle):
        flat_p = [prompts[p] for p, g in enumerate(groups) for _ in g]
        scores = oracle.score(flat_p, [y for g in groups for y in g])
        scored = len(flat_p)
        start = 0
        for p, g in enumerate(groups):
            s = scores[start:start + len(g)]
            start += len(g)
            best, worst = int(np.argmax(s)), int(np.argmin(s))
            if s[best] - s[worst] > oracle.tie_tol:
                finalists.append((p, best, worst))
            else:  # every response scored the same: nothing to learn from this prompt
                rm_ties += 1
    else:
        orders = [list(rng.permutation(len(g))) for g in groups]  # no position bias from the sampler
        best, first_losers, byes = _knockout(oracle, prompts, groups, orders, rng, keep_winner=True)
        pools = []
        for p, order in enumerate(orders):
            pool = list(first_losers[p])
            if byes[p] is not None:  # the bye never played round one; if it became champion, stand in
                pool.append(byes[p] if byes[p] != best[p] else next(i for i in order if i not in pool + [best[p]]))
            pools.append(pool)
        worst, _, _ = _knockout(oracle, prompts, groups, pools, rng, keep_winner=False)
        finalists = [(p, best[p], worst[p]) for p in range(len(groups))]

    pairs: list[Pair] = []
    identical, ties = 0, rm_ties
    to_label = []
    for p, i, j in finalists:
        if groups[p][i] == groups[p][j]:
            identical += 1
        elif isinstance(oracle, RewardModelOracle) and strategy == "best_worst":
            pairs.append(Pair(prompts[p], groups[p][i], groups[p][j], p))
        else:
            to_label.append((p, i, j))
    if to_label:  # the final, labelling comparison: a fresh query, independent of the selection
        verdict = oracle.prefer_batch([prompts[p] for p, _, _ in to_label], [groups[p][i] for p, i, _ in to_label],
                                      [groups[p][j] for p, _, j in to_label], rng)
        for (p, i, j), v in zip(to_label, verdict):
            if v == TIE:
                ties += 1
            else:
                c, r = (i, j) if v == 1 else (j, i)
                pairs.append(Pair(prompts[p], groups[p][c], groups[p][r], p))
    pairs.sort(key=lambda pair: pair.prompt_index)
    stats = {"queries": oracle.queries - q0, "ties_dropped": ties + identical, "identical": identical,
             "pairs": len(pairs), "prompts": len(groups), "scored": scored, "strategy": strategy}
    return pairs, stats


def estimate_win_rates(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                       oracle: PreferenceOracle) -> list[list[float]]:
    """P̂(y_k ≻ π_t) = mean over the other K − 1 samples of P(y_k ≻ y_j), per prompt (SPPO's targets).

    A pairwise oracle is asked K(K−1)/2 times per prompt (``P(y_j ≻ y_k) = 1 − P(y_k ≻ y_j)``);
    a reward model scores K responses and uses Bradley–Terry.
    """
    _check(prompts, responses)
    groups = [list(g) for g in responses]
    mats = []
    if isinstance(oracle, RewardModelOracle):
        flat = oracle.score([prompts[p] for p, g in enumerate(groups) for _ in g], [y for g in groups for y in g])
        start = 0
        for g in groups:
            r = flat[start:start + len(g)]
            start += len(g)
            mats.append(1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :]))))
    else:
        idx = [(p, i, j) for p, g in enumerate(groups) for i in range(len(g)) for j in range(i + 1, len(g))]
        probs = oracle.prob_batch([prompts[p] for p, _, _ in idx], [groups[p][i] for p, i, _ in idx],
                                  [groups[p][j] for p, _, j in idx])
        mats = [np.full((len(g), len(g)), 0.5) for g in groups]
        for (p, i, j), v in zip(idx, probs):
            mats[p][i, j], mats[p][j, i] = v, 1.0 - v
    out = []
    for m in mats:
        k = m.shape[0]
        out.append([float((m[i].sum() - m[i, i]) / (k - 1)) for i in range(k)])
    return out
