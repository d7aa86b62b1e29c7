"""The embedded default task's oracle: a transitive quality plus a rock-paper-scissors style cycle.

For a prompt ``x`` and responses ``a``, ``b``::

    P(a ≻ b | x) = σ(α · dz_m(q(a) − q(b)) + β · C_γ[c(a), c(b)])

* ``q(y) ∈ [0, 1]`` (quality, transitive) is the mean of four checks, each in ``[0, 1]``:
  ``on_topic`` — 1 if the response uses a content word of the prompt (its topic for default prompts),
  ½ if it also names another of the default task's topics, 0 if it misses the prompt's words;
  ``ending`` — it ends with ``.``, ``!`` or ``?``; ``length`` — 1 inside the band of 9–12 words, falling
  linearly to 0 at 6 words outside it (so 6 words score ½); ``variety`` — distinct / total over its content words (no
  repetition). An empty response scores 0. Equal weights and a narrow length band on purpose: the
  SFT-warm-started tiny model rarely copies the topic (measured: ~2 % on topic, 80 % properly ended), so
  the checks it *can* fix by shifting its token distribution (ending; length, i.e. which response
  templates it favours) must carry real weight and leave headroom for win-rates to keep rising over
  several iterations (π_ref scores ~0.70 on the 9–12 band against ~0.87 on a loose 6–14 one); the
  graded length also makes exact ties (dropped pairs) rarer. One failed check costs α/4 = 2 logits.
* ``c(y) ∈ {rock, paper, scissors, None}`` (style) is the family (``inpo/assets/default_task.json``) with
  strictly the most words in ``y``; ``None`` when no family dominates.
* ``C_γ`` is skew-symmetric: ``C[rock, scissors] = C[scissors, paper] = C[paper, rock] = 1``, their
  transposes −1, 0 on the diagonal; a response with a dominant style beats one without by ``γ``
  (``none_penalty``; ``C[s, None] = γ``, ``C[None, s] = −γ``, default 0).
* ``dz_m(d) = sign(d)·max(|d| − m, 0)`` is a dead zone of width ``m`` (``quality_margin``, default 0): quality
  gaps of at most ``m`` are ignored, so style decides between responses of nearly equal quality.

The intransitivity knobs (``inpo train --oracle synthetic:alpha=8,beta=2,none_penalty=1,quality_margin=0.25``):
``β/α`` sets how large a quality gap the style cycle can overturn (|Δq| < β/α once past the dead zone);
``quality_margin`` keeps small quality gaps from overriding the cycle at all; ``none_penalty`` closes the
"pure-Nash escape": with ``γ = 0`` a top-quality response with *no* dominant style ties every other top-quality
response, a pure strategy nobody can exploit that a reward maximiser can reach; with ``γ > 0`` it loses to every
styled response, so the Nash policy of the top-quality responses is the uniform mix of the three styles. ``β = 0``
makes the oracle transitive (Bradley–Terry in q). :meth:`best_response_value` gives the exact best response over
the whole feature space (quality × style), which :mod:`inpo.exploitability` uses.

So ``P(a ≻ b) + P(b ≻ a) = 1`` and ``P(y ≻ y) = ½``. With ``β > 0`` three responses of equal quality in
the three styles form a strict cycle, which no Bradley–Terry score can explain; the KL-regularised
Nash policy mixes the styles evenly while pushing quality up — the part a tiny model can learn by
shifting its token distribution, so win-rates against the reference rise within a few iterations.
Everything is a pure function of the text; ``seed`` only feeds the ``"sample"`` mode's default RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from inpo.data.chat import prompt_text
from inpo.data.prompts import prompt_keywords, task_spec, words
from inpo.oracles.base import PreferenceOracle

__all__ = ["SyntheticIntransitiveOracle", "STYLES", "CYCLE", "QUALITY_WEIGHTS", "LENGTH_BAND"]

STYLES = ("rock", "paper", "scissors")
# (winner, loser): rock blunts scissors, scissors cut paper, paper wraps rock.
CYCLE = (("rock", "scissors"), ("scissors", "paper"), ("paper", "rock"))
QUALITY_WEIGHTS = {"on_topic": 0.25, "ending": 0.25, "length": 0.25, "variety": 0.25}
LENGTH_BAND = (9, 12)
_LENGTH_FALLOFF = 6.0
# Function words ignored by the variety check: "the ... and the ..." is not a repetition.
_FUNCTION = frozenset("a an the and but of in on at to is it its all me my so very also".split())


def _style_matrix(none_penalty: float = 0.0) -> np.ndarray:
    m = np.zeros((len(STYLES) + 1, len(STYLES) + 1))  # last row/col: no dominant style
    for win, lose in CYCLE:
        i, j = STYLES.index(win), STYLES.index(lose)
        m[i, j], m[j, i] = 1.0, -1.0
    m[:-1, -1], m[-1, :-1] = none_penalty, -none_penalty
    return m


def _dead_zone(d, margin: float):
    """sign(d)·max(|d| − margin, 0): odd, so P(a ≻ b) + P(b ≻ a) = 1 still holds."""
    return np.sign(d) * np.maximum(np.abs(d) - margin, 0.0)


class SyntheticIntransitiveOracle(PreferenceOracle):
    """The default task's oracle (see the module docstring for the exact formula).

    ``alpha`` weighs quality differences, ``beta`` the rock-paper-scissors term, ``none_penalty`` (γ) what a
    styled response gains over an unstyled one, ``quality_margin`` (m ∈ [0, 1)) the dead zone of quality gaps;
    ``mode`` and ``seed`` as in :class:`~inpo.oracles.base.PreferenceOracle`.
    """

    def __init__(self, *, alpha: float = 8.0, beta: float = 1.0, none_penalty: float = 0.0,
                 quality_margin: float = 0.0, mode: str = "deterministic", seed: int = 0, tie_tol: float = 1e-9):
        super().__init__(mode=mode, seed=seed, tie_tol=tie_tol)
        for name, value in (("alpha", alpha), ("beta", beta), ("none_penalty", none_penalty),
                            ("quality_margin", quality_margin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if quality_margin >= 1:
            raise ValueError(f"quality_margin must be < 1 (qualities lie in [0, 1]), got {quality_margin!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.none_penalty, self.quality_margin = float(none_penalty), float(quality_margin)
        self._families = {style: frozenset(task_spec()["styles"][style]) for style in STYLES}
        self._topics = frozenset(task_spec()["topics"])
        self._C = _style_matrix(self.none_penalty)
        # Responses recur across tournament rounds; features are pure functions of the text.
        self._features_of = lru_cache(maxsize=65536)(self._features)

    def _cached(self, prompt, response: str) -> dict:
        return self._features_of(prompt_text(prompt), response)

    def __repr__(self) -> str:
        return (f"SyntheticIntransitiveOracle(alpha={self.alpha}, beta={self.beta}, none_penalty={self.none_penalty}, "
                f"quality_margin={self.quality_margin}, mode={self.mode!r}, queries={self.queries})")

    def _features(self, prompt: str, response: str) -> dict:
        ws = words(response)
        keys = prompt_keywords(prompt)
        lo, hi = LENGTH_BAND
        n = len(ws)
        gap = lo - n if n < lo else (n - hi if n > hi else 0)
        content = [w for w in ws if w not in _FUNCTION]
        checks = {
            # Naming the prompt's subject counts; drifting to other task topics as well halves it, so
            # spraying topic nouns in the hope of hitting the right one does not pay.
            "on_topic": (1.0 if not (set(ws) & self._topics) - keys else 0.5) if keys & set(ws) else
                        (0.0 if keys else 1.0),
            "ending": float(n > 0 and response.rstrip().endswith((".", "!", "?"))),
            "length": 0.0 if n == 0 else max(0.0, 1.0 - gap / _LENGTH_FALLOFF),
            "variety": len(set(content)) / len(content) if content else 0.0,
        }
        quality = sum(QUALITY_WEIGHTS[k] * v for k, v in checks.items()) if n else 0.0
        counts = [sum(w in self._families[s] for w in ws) for s in STYLES]
        top = max(counts)
        style = STYLES[counts.index(top)] if top > 0 and counts.count(top) == 1 else None
        return {**checks, "quality": quality, "style": style, "words": n}

    def features(self, prompt: str, response: str) -> dict:
        """The four checks, ``quality``, ``style`` and word count of ``response`` (uncounted)."""
        return dict(self._cached(prompt, response))

    def quality(self, prompt: str, response: str) -> float:
        """q(response | prompt) ∈ [0, 1], the transitive part."""
        return self._cached(prompt, response)["quality"]

    def style(self, response: str) -> str | None:
        """The dominant style family of ``response`` or None (the prompt plays no part)."""
        return self._cached("", response)["style"]

    def logit(self, prompt: str, a: str, b: str) -> float:
        """α·dz_m(q(a) − q(b)) + β·C_γ[c(a), c(b)] (uncounted)."""
        fa, fb = self._cached(prompt, a), self._cached(prompt, b)
        return float(self.feature_logits([fa["quality"]], [_style_index(fa["style"])],
                                         [fb["quality"]], [_style_index(fb["style"])])[0, 0])

    def feature_logits(self, q_a, s_a, q_b, s_b) -> np.ndarray:
        """``[len(q_a), len(q_b)]`` logits of every feature pair (quality ∈ [0, 1], style index 0-2 for
        :data:`STYLES`, 3 for no dominant style): the oracle as a function of features alone."""
        q_a, q_b = np.asarray(q_a, np.float64)[:, None], np.asarray(q_b, np.float64)[None, :]
        s_a, s_b = np.asarray(s_a, np.int64)[:, None], np.asarray(s_b, np.int64)[None, :]
        return self.alpha * _dead_zone(q_a - q_b, self.quality_margin) + self.beta * self._C[s_a, s_b]

    def feature_arrays(self, prompt: str, responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(qualities, style indices) of ``responses`` (uncounted)."""
        feats = [self._cached(prompt, y) for y in responses]
        return (np.array([f["quality"] for f in feats], np.float64),
                np.array([_style_index(f["style"]) for f in feats], np.int64))

    def feature_matrix(self, prompt: str, responses: Sequence[str], *, fixed_quality: bool = False) -> np.ndarray:
        """``[4, K]`` P(y′ ≻ y_j) for the best challenger of each style class y′ (rows: :data:`STYLES`, then no
        style) against the K ``responses`` (uncounted). The oracle depends on a response only through (quality,
        style) and its logit is nondecreasing in the challenger's quality, so over the whole feature space the
        best challenger of each style has quality 1. ``fixed_quality=True``: the style-only part, each comparison
        at the opponent's own quality (q′ = q(y_j)), i.e. σ(β·C_γ[s′, c(y_j)])."""
        q, s = self.feature_arrays(prompt, responses)
        if not len(q):
            raise ValueError("responses is empty: need at least one sample of the policy")
        return self.feature_probs(q, s, fixed_quality=fixed_quality)

    def feature_probs(self, q, s, *, fixed_quality: bool = False) -> np.ndarray:
        """:meth:`feature_matrix` from feature arrays (qualities, style indices) instead of texts."""
        styles = np.arange(len(STYLES) + 1)
        if fixed_quality:
            z = self.beta * self._C[styles[:, None], np.asarray(s, np.int64)[None, :]]
        else:
            z = self.feature_logits(np.ones(len(styles)), styles, q, s)
        return _sigmoid(z)

    def best_response_value(self, prompt: str, responses: Sequence[str], *, fixed_quality: bool = False) -> float:
        """max over the whole feature space of E_y P(y′ ≻ y), y uniform over ``responses`` (uncounted)."""
        return float(self.feature_matrix(prompt, responses, fixed_quality=fixed_quality).mean(axis=1).max())

    def _probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        fa = [self._cached(x, y) for x, y in zip(prompts, a)]
        fb = [self._cached(x, y) for x, y in zip(prompts, b)]
        qa, qb = (np.array([f["quality"] for f in fs], np.float64) for fs in (fa, fb))
        sa, sb = (np.array([_style_index(f["style"]) for f in fs], np.int64) for fs in (fa, fb))
        return _sigmoid(self.alpha * _dead_zone(qa - qb, self.quality_margin) + self.beta * self._C[sa, sb])


def _style_index(style: str | None) -> int:
    return STYLES.index(style) if style else len(STYLES)


def _sigmoid(z) -> np.ndarray:
    # σ(z) and σ(−z) = 1 − σ(z) exactly in floating point: swap-symmetry holds to the last bit.
    z = np.asarray(z, np.float64)
    pos = 1.0 / (1.0 + np.exp(-np.abs(z)))
    return np.where(z >= 0, pos, 1.0 - pos)
