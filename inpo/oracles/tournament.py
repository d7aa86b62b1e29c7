"""The one best/worst tournament, shared by the LM loop (:func:`inpo.oracles.select_pairs`) and the tabular games
(:mod:`inpo.games.solvers`), so both count oracle queries under the same protocol.

For each group of K candidates (the K responses to one prompt), in the order given:

1. a knockout for the winner: K − 1 comparisons;
2. a knockout among the first round's losers (plus the first round's bye when K is odd -- the worst candidate, if
   preferences are transitive, never won a first-round match; when the bye became the champion, the first
   candidate in order that is neither the champion nor a first-round loser stands in), where the *loser* of each
   match advances: ⌈K/2⌉ − 1 comparisons;
3. one fresh comparison of the two finalists, which labels the pair (so the label is an unbiased draw, independent
   of the selection); a tie there drops the pair, and two identical finalists are dropped without asking.

That is K − 1 + ⌈K/2⌉ queries per group with K distinct candidates (:func:`tournament_queries`): 11 for K = 8,
as in the INPO paper (7 + 4). Brackets run in lock-step rounds over all groups, one batched ``play`` call per
round. How a comparison is answered -- and what it costs, e.g. whether comparing a candidate with itself is
asked at all -- is the caller's ``play`` / ``decide``: a tie inside a bracket must be settled there (a bracket
must advance someone); only the labelling comparison may return :data:`TIE`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inpo.oracles.base import TIE

__all__ = ["tournament_queries", "knockout", "best_and_worst", "label_pairs", "TIE"]

# play(a, b) -> bool array of a's shape: True where candidate a[r, c] beats b[r, c] (same group r).
Play = Callable[[np.ndarray, np.ndarray], np.ndarray]


def tournament_queries(k: int) -> int:
    """Comparisons one best/worst tournament makes over ``k`` distinct candidates: K − 1 + ⌈K/2⌉."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"a tournament needs at least 2 candidates, got {k!r}")
    return int(k) - 1 + (int(k) + 1) // 2


def knockout(players: np.ndarray, play: Play, *, keep_winner: bool) -> tuple[np.ndarray, np.ndarray]:
    """Single elimination over the columns of ``players`` [M, k], row by row, in lock-step rounds: columns
    (0, 1), (2, 3), ... meet; an odd one out (the last column) gets a bye. ``keep_winner=False`` advances the loser
    of each match (to find the worst). Returns (the survivor per row [M], the first round's eliminated
    [M, ⌊k/2⌋])."""
    players = np.asarray(players)
    first_out = players[:, :0]
    first = True
    while players.shape[1] > 1:
        a, b = players[:, 0:-1:2], players[:, 1::2]
        a = a[:, : b.shape[1]]
        a_wins = np.asarray(play(a, b), dtype=bool)
        advance = a_wins if keep_winner else ~a_wins
        survivors = np.where(advance, a, b)
        if first:
            first_out, first = np.where(advance, b, a), False
        if players.shape[1] % 2:
            survivors = np.concatenate([survivors, players[:, -1:]], axis=1)
        players = survivors
    return players[:, 0], first_out


def _losers_pool(k: int, best: np.ndarray, first_out: np.ndarray) -> np.ndarray:
    """Positions of the first-round losers, plus the bye (or its stand-in when the bye became the champion: the
    first position that is neither) for odd k."""
    if k % 2 == 0:
        return first_out
    extra = np.full(best.shape[0], k - 1)
    for r in np.nonzero(best == k - 1)[0]:
        taken = set(first_out[r].tolist()) | {int(best[r])}
        extra[r] = next(c for c in range(k) if c not in taken)
    return np.concatenate([first_out, extra[:, None]], axis=1)


def best_and_worst(players: np.ndarray, play: Play) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1 and 2 of the module's protocol over ``players`` [M, K] (K >= 2; candidates in bracket order, they
    may repeat): (best [M], worst [M]) as entries of ``players``."""
    players = np.asarray(players)
    if players.ndim != 2 or players.shape[1] < 2:
        raise ValueError(f"players must be [groups, K] with K >= 2, got shape {players.shape}")
    m, k = players.shape

    def play_positions(a, b):  # the brackets move positions (unique per row); play sees the candidates
        return play(np.take_along_axis(players, a, 1), np.take_along_axis(players, b, 1))

    positions = np.broadcast_to(np.arange(k), (m, k))
    best, first_out = knockout(positions, play_positions, keep_winner=True)
    worst, _ = knockout(_losers_pool(k, best, first_out), play_positions, keep_winner=False)
    rows = np.arange(m)
    return players[rows, best], players[rows, worst]


def label_pairs(best: np.ndarray, worst: np.ndarray, decide: Callable[[np.ndarray], np.ndarray],
                identical: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3: ``decide(rows)`` compares best[rows] with worst[rows] afresh (1: best wins, 0: worst wins,
    :data:`TIE`), for the rows whose finalists are not ``identical``. Returns (chosen [M], rejected [M], kept [M]
    bool): a tie or identical finalists are not kept."""
    best, worst = np.asarray(best), np.asarray(worst)
    rows = np.nonzero(~np.asarray(identical, dtype=bool))[0]
    verdict = np.full(best.shape[0], TIE, dtype=np.int64)
    if rows.size:
        verdict[rows] = np.asarray(decide(rows), dtype=np.int64)
    chosen = np.where(verdict == 0, worst, best)
    rejected = np.where(verdict == 0, best, worst)
    return chosen, rejected, verdict != TIE
