"""The embedded default task's oracle: a transitive quality plus a rock-paper-scissors style cycle.

For a prompt ``x`` and responses ``a``, ``b``::

    P(a ≻ b | x) = σ(α · (q(a) − q(b)) + β · C[c(a), c(b)])

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
* ``C`` is skew-symmetric: ``C[rock, scissors] = C[scissors, paper] = C[paper, rock] = 1``, their
  transposes −1, and 0 on the diagonal and for ``None``.

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


def _style_matrix() -> np.ndarray:
    m = np.zeros((len(STYLES) + 1, len(STYLES) + 1))  # last row/col: no dominant style
    for win, lose in CYCLE:
        i, j = STYLES.index(win), STYLES.index(lose)
        m[i, j], m[j, i] = 1.0, -1.0
    return m


class SyntheticIntransitiveOracle(PreferenceOracle):
    """The default task's oracle (see the module docstring for the exact formula).

    ``alpha`` weighs quality differences, ``beta`` the rock-paper-scissors term; ``mode`` and ``seed``
    as in :class:`~inpo.oracles.base.PreferenceOracle`.
    """

    def __init__(self, *, alpha: float = 8.0, beta: float = 1.0, mode: str = "deterministic", seed: int = 0,
                 tie_tol: float = 1e-9):
        super().__init__(mode=mode, seed=seed, tie_tol=tie_tol)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self._families = {style: frozenset(task_spec()["styles"][style]) for style in STYLES}
        self._topics = frozenset(task_spec()["topics"])
        self._C = _style_matrix()
        # Responses recur across tournament rounds; features are pure functions of the text.
        self._cached = lru_cache(maxsize=65536)(self._features)

    def __repr__(self) -> str:
        return (f"SyntheticIntransitiveOracle(alpha={self.alpha}, beta={self.beta}, mode={self.mode!r}, "
                f"queries={self.queries})")

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
        """α·(q(a) − q(b)) + β·C[c(a), c(b)] (uncounted)."""
        fa, fb = self._cached(prompt, a), self._cached(prompt, b)
        ia = STYLES.index(fa["style"]) if fa["style"] else len(STYLES)
        ib = STYLES.index(fb["style"]) if fb["style"] else len(STYLES)
        return self.alpha * (fa["quality"] - fb["quality"]) + self.beta * self._C[ia, ib]

    def _probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        from inpo.data.chat import prompt_text  # a conversation's topic is in its last user turn

        z = np.array([self.logit(prompt_text(x), ya, yb) for x, ya, yb in zip(prompts, a, b)], dtype=np.float64)
        # σ(z) and σ(−z) = 1 − σ(z) exactly in floating point: swap-symmetry holds to the last bit.
        pos = 1.0 / (1.0 + np.exp(-np.abs(z)))
        return np.where(z >= 0, pos, 1.0 - pos)
