"""Oracles that read two features of each response -- a transitive quality and a style in a cycle -- and nothing else.

For a prompt ``x`` and responses ``a``, ``b``::

    P(a ≻ b | x) = σ(α · dz_m(q(a) − q(b)) + β · C_γ[c(a), c(b)])

* ``q(y) ∈ [0, 1]``: the quality (transitive), a subclass's checks of the text;
* ``c(y)``: one of the subclass's three :attr:`~FeatureOracle.styles`, or None (no style);
* ``C_γ`` is skew-symmetric: +1 for each (winner, loser) of :attr:`~FeatureOracle.cycle`, −1 for its transpose, 0 on
  the diagonal; a styled response beats an unstyled one by ``γ`` (``none_penalty``);
* ``dz_m(d) = sign(d)·max(|d| − m, 0)``: quality gaps of at most ``m`` (``quality_margin``) are ignored.

So ``P(a ≻ b) + P(b ≻ a) = 1`` and ``P(y ≻ y) = ½`` to the last bit, three responses of equal quality in the three
styles form a strict cycle that no Bradley–Terry score explains, and the best response over the whole feature space
is computable (:meth:`FeatureOracle.best_response_value`, which :mod:`inpo.exploitability` uses). Subclasses:
:class:`~inpo.oracles.synthetic.SyntheticIntransitiveOracle` (the embedded task's word families) and
:class:`~inpo.oracles.formats.FormatOracle` (response formats of real chat models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from inpo.data.chat import prompt_text
from inpo.oracles.base import PreferenceOracle

__all__ = ["FeatureOracle", "style_matrix", "sigmoid"]


def style_matrix(styles: Sequence[str], cycle: Sequence[tuple[str, str]], none_penalty: float = 0.0) -> np.ndarray:
    """``C_γ`` over ``styles`` plus a last row/column for "no style"."""
    m = np.zeros((len(styles) + 1, len(styles) + 1))
    for win, lose in cycle:
        i, j = styles.index(win), styles.index(lose)
        m[i, j], m[j, i] = 1.0, -1.0
    m[:-1, -1], m[-1, :-1] = none_penalty, -none_penalty
    return m


def _dead_zone(d, margin: float):
    """sign(d)·max(|d| − margin, 0): odd, so P(a ≻ b) + P(b ≻ a) = 1 still holds."""
    return np.sign(d) * np.maximum(np.abs(d) - margin, 0.0)


def sigmoid(z) -> np.ndarray:
    """σ(z) with σ(−z) = 1 − σ(z) exactly in floating point: swap-symmetry holds to the last bit."""
    z = np.asarray(z, np.float64)
    pos = 1.0 / (1.0 + np.exp(-np.abs(z)))
    return np.where(z >= 0, pos, 1.0 - pos)


class FeatureOracle(PreferenceOracle):
    """The formula of the module docstring (defaults α = 8, β = 2, γ = 1, m = 0). Subclasses set :attr:`styles` (three
    names) and :attr:`cycle` (the three (winner, loser) pairs) and implement :meth:`_features` (a dict with at least
    ``quality`` and ``style``)."""

    styles: tuple[str, ...] = ()
    cycle: tuple[tuple[str, str], ...] = ()

    def __init__(self, *, alpha: float = 8.0, beta: float = 2.0, none_penalty: float = 1.0, quality_margin: float = 0.0,
                 mode: str = "deterministic", seed: int = 0, tie_tol: float = 1e-9):
        super().__init__(mode=mode, seed=seed, tie_tol=tie_tol)
        for name, value in (("alpha", alpha), ("beta", beta), ("none_penalty", none_penalty),
                            ("quality_margin", quality_margin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if quality_margin >= 1:
            raise ValueError(f"quality_margin must be < 1 (qualities lie in [0, 1]), got {quality_margin!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.none_penalty, self.quality_margin = float(none_penalty), float(quality_margin)
        self._C = style_matrix(self.styles, self.cycle, self.none_penalty)
        # Responses recur across tournament rounds; features are pure functions of the text.
        self._features_of = lru_cache(maxsize=65536)(self._features)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(alpha={self.alpha}, beta={self.beta}, none_penalty={self.none_penalty}, "
                f"quality_margin={self.quality_margin}, mode={self.mode!r}, queries={self.queries})")

    def _features(self, prompt: str, response: str) -> dict:
        raise NotImplementedError

    def _cached(self, prompt, response: str) -> dict:
        return self._features_of(prompt_text(prompt), response)

    def _style_index(self, style: str | None) -> int:
        return self.styles.index(style) if style else len(self.styles)

    def features(self, prompt, response: str) -> dict:
        """The checks, ``quality`` and ``style`` of ``response`` (uncounted): why the oracle prefers what it does."""
        return dict(self._cached(prompt, response))

    def quality(self, prompt, response: str) -> float:
        """q(response | prompt) ∈ [0, 1], the transitive part."""
        return self._cached(prompt, response)["quality"]

    def style(self, response: str) -> str | None:
        """The style of ``response`` or None (the prompt plays no part)."""
        return self._cached("", response)["style"]

    def logit(self, prompt, a: str, b: str) -> float:
        """α·dz_m(q(a) − q(b)) + β·C_γ[c(a), c(b)] (uncounted)."""
        fa, fb = self._cached(prompt, a), self._cached(prompt, b)
        return float(self.feature_logits([fa["quality"]], [self._style_index(fa["style"])],
                                         [fb["quality"]], [self._style_index(fb["style"])])[0, 0])

    def feature_logits(self, q_a, s_a, q_b, s_b) -> np.ndarray:
        """``[len(q_a), len(q_b)]`` logits of every feature pair (quality ∈ [0, 1], style index into :attr:`styles`,
        ``len(styles)`` for no style): the oracle as a function of features alone."""
        q_a, q_b = np.asarray(q_a, np.float64)[:, None], np.asarray(q_b, np.float64)[None, :]
        s_a, s_b = np.asarray(s_a, np.int64)[:, None], np.asarray(s_b, np.int64)[None, :]
        return self.alpha * _dead_zone(q_a - q_b, self.quality_margin) + self.beta * self._C[s_a, s_b]

    def feature_arrays(self, prompt, responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(qualities, style indices) of ``responses`` (uncounted)."""
        feats = [self._cached(prompt, y) for y in responses]
        return (np.array([f["quality"] for f in feats], np.float64),
                np.array([self._style_index(f["style"]) for f in feats], np.int64))

    def feature_matrix(self, prompt, responses: Sequence[str], *, fixed_quality: bool = False) -> np.ndarray:
        """``[len(styles) + 1, K]`` P(y′ ≻ y_j) for the best challenger of each style class y′ (rows: :attr:`styles`,
        then no style) against the K ``responses`` (uncounted). The oracle depends on a response only through
        (quality, style) and its logit is nondecreasing in the challenger's quality, so over the whole feature space
        the best challenger of each style has quality 1. ``fixed_quality=True``: the style-only part, each comparison
        at the opponent's own quality (q′ = q(y_j)), i.e. σ(β·C_γ[s′, c(y_j)])."""
        q, s = self.feature_arrays(prompt, responses)
        if not len(q):
            raise ValueError("responses is empty: need at least one sample of the policy")
        return self.feature_probs(q, s, fixed_quality=fixed_quality)

    def feature_probs(self, q, s, *, fixed_quality: bool = False) -> np.ndarray:
        """:meth:`feature_matrix` from feature arrays (qualities, style indices) instead of texts."""
        styles = np.arange(len(self.styles) + 1)
        if fixed_quality:
            z = self.beta * self._C[styles[:, None], np.asarray(s, np.int64)[None, :]]
        else:
            z = self.feature_logits(np.ones(len(styles)), styles, q, s)
        return sigmoid(z)

    def best_response_value(self, prompt, responses: Sequence[str], *, fixed_quality: bool = False) -> float:
        """max over the whole feature space of E_y P(y′ ≻ y), y uniform over ``responses`` (uncounted)."""
        return float(self.feature_matrix(prompt, responses, fixed_quality=fixed_quality).mean(axis=1).max())

    def _probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        fa = [self._cached(x, y) for x, y in zip(prompts, a)]
        fb = [self._cached(x, y) for x, y in zip(prompts, b)]
        qa, qb = (np.array([f["quality"] for f in fs], np.float64) for fs in (fa, fb))
        sa, sb = (np.array([self._style_index(f["style"]) for f in fs], np.int64) for fs in (fa, fb))
        return sigmoid(self.alpha * _dead_zone(qa - qb, self.quality_margin) + self.beta * self._C[sa, sb])
