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
The formula and the feature-space best response are :class:`~inpo.oracles.features.FeatureOracle`'s; this module
supplies the checks and the word families.
"""

from __future__ import annotations

from inpo.data.prompts import prompt_keywords, task_spec, words
from inpo.oracles.features import FeatureOracle

__all__ = ["SyntheticIntransitiveOracle", "STYLES", "CYCLE", "QUALITY_WEIGHTS", "LENGTH_BAND"]

STYLES = ("rock", "paper", "scissors")
# (winner, loser): rock blunts scissors, scissors cut paper, paper wraps rock.
CYCLE = (("rock", "scissors"), ("scissors", "paper"), ("paper", "rock"))
QUALITY_WEIGHTS = {"on_topic": 0.25, "ending": 0.25, "length": 0.25, "variety": 0.25}
LENGTH_BAND = (9, 12)
_LENGTH_FALLOFF = 6.0
# Function words ignored by the variety check: "the ... and the ..." is not a repetition.
_FUNCTION = frozenset("a an the and but of in on at to is it its all me my so very also".split())


class SyntheticIntransitiveOracle(FeatureOracle):
    """The default task's oracle (see the module docstring for the exact formula).

    ``alpha`` weighs quality differences, ``beta`` the rock-paper-scissors term, ``none_penalty`` (γ) what a
    styled response gains over an unstyled one, ``quality_margin`` (m ∈ [0, 1)) the dead zone of quality gaps;
    ``mode`` and ``seed`` as in :class:`~inpo.oracles.base.PreferenceOracle`.
    """

    styles = STYLES
    cycle = CYCLE

    def __init__(self, *, alpha: float = 8.0, beta: float = 1.0, none_penalty: float = 0.0,
                 quality_margin: float = 0.0, mode: str = "deterministic", seed: int = 0, tie_tol: float = 1e-9):
        super().__init__(alpha=alpha, beta=beta, none_penalty=none_penalty, quality_margin=quality_margin,
                         mode=mode, seed=seed, tie_tol=tie_tol)
        self._families = {style: frozenset(task_spec()["styles"][style]) for style in STYLES}
        self._topics = frozenset(task_spec()["topics"])

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
