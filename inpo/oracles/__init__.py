"""Preference oracles behind one interface, pair selection (best/worst tournament, random) and
win-rate targets, all with exact query counting.

``make_oracle(spec)`` builds one from a string: ``synthetic`` (the default task's intransitive oracle;
options as ``synthetic:alpha=8,beta=1,mode=sample``), ``reward:PATH`` or ``pairwise:PATH`` (local
Hugging Face sequence-classification checkpoints; a real-model name such as ``smollm2`` resolves to its folder
through :func:`inpo.models.resolve_model`).
"""

from __future__ import annotations

from inpo.models import resolve_model
from inpo.oracles.base import MODES, TIE, PreferenceOracle
from inpo.oracles.models import PairwiseModelOracle, RewardModelOracle
from inpo.oracles.selection import STRATEGIES, Pair, estimate_win_rates, select_pairs, tournament_queries
from inpo.oracles.synthetic import SyntheticIntransitiveOracle

__all__ = ["PreferenceOracle", "SyntheticIntransitiveOracle", "RewardModelOracle", "PairwiseModelOracle",
           "make_oracle", "Pair", "select_pairs", "estimate_win_rates", "tournament_queries", "ORACLE_KINDS",
           "MODES", "STRATEGIES", "TIE"]

ORACLE_KINDS = ("synthetic", "reward:PATH", "pairwise:PATH")


def _synthetic_options(text: str) -> dict:
    opts: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("alpha", "beta", "none_penalty", "quality_margin", "mode"):
            raise ValueError(f"bad synthetic oracle option {item!r}; expected alpha=FLOAT, beta=FLOAT, "
                             f"none_penalty=FLOAT, quality_margin=FLOAT or mode={'|'.join(MODES)}, "
                             f"e.g. 'synthetic:alpha=8,beta=1'")
        try:
            opts[key] = value if key == "mode" else float(value)
        except ValueError:
            raise ValueError(f"synthetic oracle option {key} must be a number, got {value!r}") from None
    return opts


def make_oracle(spec: str, *, device="cpu", seed: int = 0, **kw) -> PreferenceOracle:
    """An oracle from a spec string: ``synthetic[:k=v,...]``, ``reward:PATH`` or ``pairwise:PATH``.

    Extra keywords go to the oracle's constructor (e.g. ``mode="sample"``, ``batch_size=32``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"oracle spec must be a str, got {type(spec).__name__}")
    kind, sep, arg = spec.partition(":")
    if kind == "synthetic":
        return SyntheticIntransitiveOracle(seed=seed, **{**_synthetic_options(arg), **kw})
    if kind in ("reward", "pairwise"):
        if not arg:
            raise ValueError(f"oracle spec {spec!r} needs a path: '{kind}:PATH' (a local model directory)")
        cls = RewardModelOracle if kind == "reward" else PairwiseModelOracle
        return cls(resolve_model(arg), device=device, seed=seed, **kw)  # a model name (smollm2) or a folder
    raise ValueError(f"unknown oracle spec {spec!r}; valid: {', '.join(ORACLE_KINDS)}")
