"""The preference-oracle interface: P(a ≻ b | prompt), counted queries, and decisions from it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PreferenceOracle", "MODES", "TIE"]

MODES = ("deterministic", "sample")
TIE = -1


def _check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    for name, seq in (("prompts", prompts), ("a", a), ("b", b)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list of str, got {type(seq).__name__}")
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")


class PreferenceOracle:
    """Base class of every preference oracle.

    Subclasses implement :meth:`_probs` (uncounted, batched ``P(a_i ≻ b_i | prompt_i)``); the public
    methods count queries: ``queries`` grows by one per compared pair, whichever method asked (a reward model
    counts one per response it scores instead, :class:`~inpo.oracles.models.RewardModelOracle`).

    ``mode`` says how :meth:`prefer` turns a probability into a decision: ``"deterministic"`` takes the
    more likely side (a tie, ``-1``, when ``|P − ½| ≤ tie_tol``), ``"sample"`` draws ``Bernoulli(P)``.
    """

    def __init__(self, *, mode: str = "deterministic", seed: int = 0, tie_tol: float = 1e-9):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (0 <= tie_tol < 0.5):
            raise ValueError(f"tie_tol must be in [0, 0.5), got {tie_tol!r}")
        self.mode = mode
        self.seed = seed
        self.tie_tol = float(tie_tol)
        self.queries = 0
        self._rng = np.random.default_rng(seed)

    # -- to implement -------------------------------------------------------------------------
    def _probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    # -- public, counted ----------------------------------------------------------------------
    def prob(self, prompt: str, a: str, b: str) -> float:
        """P(a ≻ b | prompt) ∈ [0, 1]; one query."""
        return float(self.prob_batch([prompt], [a], [b])[0])

    def prob_batch(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """``[n]`` float64 array of P(a_i ≻ b_i | prompt_i); ``n`` queries."""
        _check_batch(prompts, a, b)
        if len(prompts) == 0:
            return np.zeros(0, dtype=np.float64)
        p = np.asarray(self._probs(prompts, a, b), dtype=np.float64).reshape(-1)
        if p.shape[0] != len(prompts):  # a broken subclass must not silently misalign pairs
            raise RuntimeError(f"{type(self).__name__}._probs returned {p.shape[0]} values for {len(prompts)} pairs")
        self._count(len(prompts))
        return np.clip(p, 0.0, 1.0)

    def _count(self, n_pairs: int) -> None:
        """Count ``n_pairs`` answered comparisons (an oracle that is consulted per response counts there)."""
        self.queries += n_pairs

    def decide(self, p: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Decisions for probabilities ``p`` under this oracle's mode: 1 (a wins), 0 (b wins), -1 (tie)."""
        p = np.asarray(p, dtype=np.float64)
        if self.mode == "sample":
            rng = self._rng if rng is None else rng
            return (rng.random(p.shape) < p).astype(np.int64)
        out = (p > 0.5).astype(np.int64)
        out[np.abs(p - 0.5) <= self.tie_tol] = TIE
        return out

    def prefer(self, prompt: str, a: str, b: str, rng: np.random.Generator | None = None) -> int:
        """1 if ``a`` wins, 0 if ``b`` wins, -1 for a tie (deterministic mode only); one query."""
        return int(self.prefer_batch([prompt], [a], [b], rng)[0])

    def prefer_batch(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str],
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """Batched :meth:`prefer`: ``[n]`` int64 array of 1 / 0 / -1; ``n`` queries."""
        return self.decide(self.prob_batch(prompts, a, b), rng)

    def reset_queries(self) -> int:
        """Zero the query counter and return what it was."""
        n, self.queries = self.queries, 0
        return n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, queries={self.queries})"
