"""What a transformers causal LM does between its last hidden state and its logits, read in one place.

Most families compute ``logits = lm_head(hidden)``; some transform them afterwards (found by reading every
``*ForCausalLM.forward`` of the installed transformers, 5.2x), and the fused head must apply the same transform or
its log-probs are silently wrong (a Gemma-2 sequence: −404 instead of −217). :func:`logit_transform_of` returns the
:class:`inpo.ops.transform.LogitTransform` of a model, the trainer's, the precompute's and the benches' one source
(:func:`inpo.train.model.hidden_and_head` attaches it to the head inputs), and refuses a model whose head inpo
cannot reproduce, naming the attribute:

==========================================================  =======================================================
class (transformers)                                        what its forward does after ``lm_head``
==========================================================  =======================================================
Gemma2/3/3n/4, VaultGemma, NanoChat, Beam ``ForCausalLM``   ``softcap·tanh(logits / softcap)``, softcap =
                                                            ``config.final_logit_softcapping`` (None = none)
RecurrentGemmaForCausalLM                                   the same with ``config.logits_soft_cap``
xLSTMForCausalLM                                            the same with ``config.output_logit_soft_cap``
Cohere, Cohere2, Cohere2Moe ``ForCausalLM``                 ``logits · model.logit_scale``
HyperCLOVAXForCausalLM                                      ``logits · config.logits_scaling``
FalconH1ForCausalLM                                         ``logits · model.model.lm_head_multiplier``
Granite, GraniteSWA, GraniteMoe(SWA/Hybrid/Shared)          ``logits / config.logits_scaling``
MiniCPM3ForCausalLM                                         ``lm_head(hidden / config.logits_scaling)``: the same
                                                            as dividing the logits for its bias-free head
==========================================================  =======================================================

A class not in the table is taken to compute plain ``lm_head(hidden)`` unless its config (or text config) sets one
of the attributes other families use for a transform (:data:`TRANSFORM_ATTRIBUTES`): then it is refused, since
what it does with it is unknown (e.g. Inkling's ``logits_mup_width_multiplier`` and ``unpadded_vocab_size``, the
multimodal ``*ForConditionalGeneration`` heads of PaliGemma, Granite-vision, Muse, which inpo has not verified).
Heads that are not a linear layer on the body's output (BERT-style prediction heads, Chameleon's image-token mask)
name no attribute; :func:`inpo.train.model.check_head_matches_model`, run when a model is loaded, compares the
fused head with the model's own logits on a few tokens and refuses those too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inpo.ops.transform import IDENTITY, LogitTransform

__all__ = ["logit_transform_of", "TRANSFORM_ATTRIBUTES", "SUPPORTED_CLASSES"]


@dataclass(frozen=True)
class _Recipe:
    """Attribute paths (from the model object) of what one class applies to its logits; None = not applied."""

    multiplier: str | None = None  # logits · value
    divisor: str | None = None  # logits / value
    softcap: str | None = None  # value · tanh(logits / value), after the multiplier or divisor
    hidden_divisor: str | None = None  # lm_head(hidden / value): equal to a divisor only without a bias


_GEMMA_CAP = _Recipe(softcap="config.final_logit_softcapping")
_GRANITE = _Recipe(divisor="config.logits_scaling")
_COHERE = _Recipe(multiplier="logit_scale")

_RECIPES: dict[str, _Recipe] = {
    **dict.fromkeys(("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3nForCausalLM", "Gemma4ForCausalLM",
                     "VaultGemmaForCausalLM", "NanoChatForCausalLM", "BeamForCausalLM"), _GEMMA_CAP),
    "RecurrentGemmaForCausalLM": _Recipe(softcap="config.logits_soft_cap"),
    "xLSTMForCausalLM": _Recipe(softcap="config.output_logit_soft_cap"),
    **dict.fromkeys(("CohereForCausalLM", "Cohere2ForCausalLM", "Cohere2MoeForCausalLM"), _COHERE),
    "HyperCLOVAXForCausalLM": _Recipe(multiplier="config.logits_scaling"),
    "FalconH1ForCausalLM": _Recipe(multiplier="model.lm_head_multiplier"),
    **dict.fromkeys(("GraniteForCausalLM", "GraniteSWAForCausalLM", "GraniteMoeForCausalLM",
                     "GraniteMoeSWAForCausalLM", "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM"),
                    _GRANITE),
    "MiniCPM3ForCausalLM": _Recipe(hidden_divisor="config.logits_scaling"),
}
SUPPORTED_CLASSES = tuple(sorted(_RECIPES))

# Config attributes that some family applies to its logits (or to the hidden state right before lm_head), and
# the values that mean "nothing": a class outside _RECIPES whose config sets one of them otherwise is refused.
TRANSFORM_ATTRIBUTES = {
    "final_logit_softcapping": (None,), "logits_soft_cap": (None,), "output_logit_soft_cap": (None,),
    "logit_scale": (None, 1, 1.0), "logits_scaling": (None, 1, 1.0), "lm_head_multiplier": (None, 1, 1.0),
    "output_multiplier": (None, 1, 1.0), "logits_mup_width_multiplier": (None, 1, 1.0),
    "unpadded_vocab_size": (None,),
}


def _read(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _value(model, cls_name: str, path: str, what: str) -> float | None:
    """The number at ``path`` (None when unset), or ValueError naming it when it is not a usable one."""
    value = _read(model, path)
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:  # a 0-d tensor or buffer
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{cls_name}: {path}={value!r} ({what}) is not a finite number > 0; the fused head cannot "
                         f"reproduce this model's logits")
    return float(value)


def _recipe_of(model) -> tuple[str, _Recipe | None]:
    """(class name, recipe): the first class of the model's MRO in the table (FSDP2 wraps a class in a subclass
    named FSDP<name>; a user's subclass inherits its parent's head), else (its own name, None)."""
    for cls in type(model).__mro__:
        if cls.__name__ in _RECIPES:
            return cls.__name__, _RECIPES[cls.__name__]
    return type(model).__name__, None


def _refuse_unknown_transform(model, cls_name: str) -> None:
    """ValueError when a class outside the table sets an attribute other families use to transform logits."""
    config = getattr(model, "config", None)
    configs = [("config", config)]
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else None
    if text is not None and text is not config:
        configs.append(("config.text_config", text))
    for prefix, cfg in configs:
        for attr, neutral in TRANSFORM_ATTRIBUTES.items():
            value = getattr(cfg, attr, None)
            if not any(value is n or (n is not None and value == n) for n in neutral):
                raise ValueError(
                    f"{cls_name}: {prefix}.{attr}={value!r}: other transformers families apply this attribute to "
                    f"the logits, and inpo has not verified what {cls_name} does with it, so the fused head cannot "
                    f"promise this model's log-probs. Supported heads with a logit transform: "
                    f"{', '.join(SUPPORTED_CLASSES)} (inpo/train/lm_head.py)")


def logit_transform_of(model) -> LogitTransform:
    """The logit transform of a transformers causal LM (the module docstring's table), or ValueError naming the
    attribute that makes its head impossible to reproduce. ``model`` is the transformers model itself (the
    trainer's wrappers unwrapped)."""
    cls_name, recipe = _recipe_of(model)
    if recipe is None:
        _refuse_unknown_transform(model, cls_name)
        return IDENTITY
    scale = 1.0
    if recipe.multiplier:
        scale *= _value(model, cls_name, recipe.multiplier, "a multiplier of the logits") or 1.0
    if recipe.divisor:
        scale /= _value(model, cls_name, recipe.divisor, "a divisor of the logits") or 1.0
    if recipe.hidden_divisor:
        divisor = _value(model, cls_name, recipe.hidden_divisor, "a divisor of the hidden state before lm_head")
        head = model.get_output_embeddings()
        if divisor not in (None, 1.0) and getattr(head, "bias", None) is not None:
            raise ValueError(f"{cls_name}: {recipe.hidden_divisor}={divisor} divides the hidden state before an "
                             f"lm_head with a bias; the fused head can only divide the logits (equal without a bias)")
        scale /= divisor or 1.0
    cap = _value(model, cls_name, recipe.softcap, "the tanh cap of the logits") if recipe.softcap else None
    if scale == 1.0 and cap is None:
        return IDENTITY
    return LogitTransform(logit_scale=scale, softcap=cap)
