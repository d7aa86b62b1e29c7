"""A transparent oracle for real chat models: a quality term read off the text plus a rock-paper-scissors cycle over
three response formats a reader can see at a glance.

The formula is :class:`~inpo.oracles.features.FeatureOracle`'s,
``P(a ≻ b) = σ(α·dz_m(q(a) − q(b)) + β·C_γ[c(a), c(b)])``, with

* ``c(y)``, the **format**, from the layout alone (checked in this order):
  ``list`` -- at least two lines that start like list items (``-``, ``*``, ``•``, ``+``, ``1.``, ``2)``);
  ``paragraphs`` -- otherwise at least two blocks of text separated by a blank line;
  ``single`` -- otherwise (one block); None for a response with no words.
  The cycle (:data:`CYCLE`): a list beats paragraphs (structure beats a wall of text), paragraphs beat a single block
  (developed beats terse), a single block beats a list (direct beats fragmented). No format wins on its own, so the
  preference is intransitive and the Nash policy over top-quality responses mixes the three formats evenly.
* ``q(y) ∈ [0, 1]``, the **quality**, the mean of four checks, each in [0, 1] (:data:`QUALITY_WEIGHTS`):
  ``complete`` -- the text ends like a finished answer (``.``, ``!``, ``?``, a closing quote, bracket or code
  fence), not cut off by the token budget; ``length`` -- 1 for :data:`LENGTH_BAND` words, falling linearly to 0 at
  no words below the band and at twice the band's top above it; ``variety`` -- distinct word trigrams / trigrams
  (a response that loops scores low); ``on_topic`` -- the share of the prompt's content words (a crude plural
  folding; instruction words such as "explain" or "list" do not count) that the response uses, full marks at half.

Defaults ``alpha=8, beta=2, none_penalty=1, quality_margin=0``: a quality gap under β/α = 0.25 can be overturned by
the format cycle, a larger one cannot. Every term is a pure function of the text, cheap (no model), and
:meth:`~inpo.oracles.features.FeatureOracle.features` shows a reader each check of any response. What it is not: a
judge of correctness -- a fluent wrong answer with the right shape scores as well as a right one.
"""

from __future__ import annotations

import re

from inpo.data.prompts import words
from inpo.oracles.features import FeatureOracle

__all__ = ["FormatOracle", "FORMATS", "CYCLE", "QUALITY_WEIGHTS", "LENGTH_BAND", "response_format"]

FORMATS = ("list", "paragraphs", "single")
# (winner, loser)
CYCLE = (("list", "paragraphs"), ("paragraphs", "single"), ("single", "list"))
QUALITY_WEIGHTS = {"complete": 0.25, "length": 0.25, "variety": 0.25, "on_topic": 0.25}
LENGTH_BAND = (10, 50)
_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+\S")
_BLOCKS = re.compile(r"\n[ \t]*\n")
_ENDINGS = (".", "!", "?", '"', "'", ")", "”", "’", "```")
# Words of a prompt that say what to do rather than what about: they do not make the topic.
_INSTRUCTION = frozenset("""
a an the of on in at to for about from into with without by as and or but if then than so
i me my we our you your he she it its they them their this that these those there here
is are was were be been being do does did done can could would should will shall may might must have has had
what why how who whom whose which when where whether
explain describe tell write give list name suggest summarize summarise define compare rewrite correct translate
classify sort turn make use show help find say provide keep start stop get let like please
short brief briefly simple simply terms few some any one two three four five six seven ten sentence sentences
example examples word words way ways idea ideas tip tips advice thing things good best better really very also
just more most
""".split())


def _fold(word: str) -> str:
    """A crude plural folding: "leaves" and "leave", "bees" and "bee" match; short words stay as they are."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def prompt_topic_words(prompt: str) -> frozenset[str]:
    """The content words of a prompt that the ``on_topic`` check looks for (folded)."""
    return frozenset(_fold(w) for w in words(prompt) if w not in _INSTRUCTION and len(w) > 2)


def response_format(response: str) -> str | None:
    """``list``, ``paragraphs``, ``single`` or None (no words), as the module docstring defines them."""
    if not words(response):
        return None
    if sum(bool(_ITEM.match(line)) for line in response.splitlines()) >= 2:
        return "list"
    blocks = [b for b in _BLOCKS.split(response.strip()) if words(b)]
    return "paragraphs" if len(blocks) >= 2 else "single"


def _length_score(n: int) -> float:
    lo, hi = LENGTH_BAND
    if n < lo:
        return n / lo
    return max(0.0, 1.0 - (n - hi) / hi) if n > hi else 1.0


def _variety(ws: list[str]) -> float:
    grams = list(zip(ws, ws[1:], ws[2:]))
    return len(set(grams)) / len(grams) if grams else float(bool(ws))


class FormatOracle(FeatureOracle):
    """The module docstring's oracle: ``--oracle format`` (options ``format:alpha=8,beta=2,none_penalty=1,
    quality_margin=0,mode=deterministic``)."""

    styles = FORMATS  # the constructor's defaults (FeatureOracle's) are this oracle's: α 8, β 2, γ 1, m 0
    cycle = CYCLE

    def _features(self, prompt: str, response: str) -> dict:
        ws = words(response)
        if not ws:
            return {**dict.fromkeys(QUALITY_WEIGHTS, 0.0), "quality": 0.0, "style": None, "words": 0}
        keys = prompt_topic_words(prompt)
        used = {_fold(w) for w in ws}
        checks = {
            "complete": float(response.rstrip().endswith(_ENDINGS)),
            "length": _length_score(len(ws)),
            "variety": _variety(ws),
            "on_topic": min(1.0, 2.0 * len(keys & used) / len(keys)) if keys else 1.0,
        }
        quality = sum(QUALITY_WEIGHTS[k] * v for k, v in checks.items())
        return {**checks, "quality": quality, "style": response_format(response), "words": len(ws)}
