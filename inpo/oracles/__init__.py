"""Preference oracles behind one interface, pair selection (best/worst tournament, random) and
win-rate targets, all with exact query counting.

``make_oracle(spec)`` builds one from a string: ``synthetic`` (the default task's intransitive oracle;
options as ``synthetic:alpha=8,beta=1,mode=sample``), ``format`` (quality + a cycle over response formats, for real
chat models; the same options), ``reward:PATH`` or ``pairwise:PATH`` (local Hugging Face sequence-classification
checkpoints), ``judge:PATH`` (a local chat model as an LLM judge). A real-model name such as ``smollm2`` resolves
to its folder through :func:`inpo.models.resolve_model`.
"""

from __future__ import annotations

from inpo.models import resolve_model
from inpo.oracles.base import MODES, TIE, PreferenceOracle
from inpo.oracles.features import FeatureOracle
from inpo.oracles.formats import FormatOracle
from inpo.oracles.judge import JudgeOracle
from inpo.oracles.models import PairwiseModelOracle, RewardModelOracle
from inpo.oracles.selection import STRATEGIES, Pair, estimate_win_rates, select_pairs, tournament_queries
from inpo.oracles.synthetic import SyntheticIntransitiveOracle

__all__ = ["PreferenceOracle", "FeatureOracle", "SyntheticIntransitiveOracle", "FormatOracle", "RewardModelOracle",
           "PairwiseModelOracle", "JudgeOracle", "make_oracle", "Pair", "select_pairs", "estimate_win_rates",
           "tournament_queries", "ORACLE_KINDS", "MODES", "STRATEGIES", "TIE"]

ORACLE_KINDS = ("synthetic", "format", "reward:PATH", "pairwise:PATH", "judge:PATH")
_FEATURE_ORACLES = {"synthetic": SyntheticIntransitiveOracle, "format": FormatOracle}
_MODEL_ORACLES = {"reward": RewardModelOracle, "pairwise": PairwiseModelOracle, "judge": JudgeOracle}


def _feature_options(kind: str, text: str) -> dict:
    opts: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("alpha", "beta", "none_penalty", "quality_margin", "mode"):
            raise ValueError(f"bad {kind} oracle option {item!r}; expected alpha=FLOAT, beta=FLOAT, "
                             f"none_penalty=FLOAT, quality_margin=FLOAT or mode={'|'.join(MODES)}, "
                             f"e.g. '{kind}:alpha=8,beta=1'")
        try:
            opts[key] = value if key == "mode" else float(value)
        except ValueError:
            raise ValueError(f"{kind} oracle option {key} must be a number, got {value!r}") from None
    return opts


def make_oracle(spec: str, *, device="cpu", seed: int = 0, **kw) -> PreferenceOracle:
    """An oracle from a spec string: ``synthetic[:k=v,...]``, ``format[:k=v,...]``, ``reward:PATH``,
    ``pairwise:PATH`` or ``judge:PATH`` (PATH: a local folder or a real model's name).

    Extra keywords go to the oracle's constructor (e.g. ``mode="sample"``, ``batch_size=32``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"oracle spec must be a str, got {type(spec).__name__}")
    kind, sep, arg = spec.partition(":")
    if kind in _FEATURE_ORACLES:
        return _FEATURE_ORACLES[kind](seed=seed, **{**_feature_options(kind, arg), **kw})
    if kind in _MODEL_ORACLES:
        if not arg:
            raise ValueError(f"oracle spec {spec!r} needs a path: '{kind}:PATH' (a local model directory or a name "
                             f"such as 'smollm2')")
        return _MODEL_ORACLES[kind](resolve_model(arg), device=device, seed=seed, **kw)  # a name (smollm2) or a folder
    raise ValueError(f"unknown oracle spec {spec!r}; valid: {', '.join(ORACLE_KINDS)}")
