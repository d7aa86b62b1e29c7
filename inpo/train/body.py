"""The policy as the trainer sees it: the decoder body's hidden states and the LM head's weight, read in one call
(under FSDP2 through the root module, :class:`FusedHeadPolicy`), for the fused head to turn into log-probs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from inpo.ops.attention import body_kwargs
from inpo.train.lm_head import logit_transform_of

__all__ = ["FusedHeadPolicy", "HeadInputs", "hidden_and_head", "unwrap"]


class FusedHeadPolicy(nn.Module):
    """Wraps a causal LM so that one ``forward`` returns (hidden, head weight, head bias).

    Needed under FSDP2: the root module's pre-forward hook unshards the embedding / final norm / LM head
    only when the call goes through the root, so the body and the head weight must be read inside it.

    The hidden states come back as the body's own ``[B, T, H]`` output, not a view of it: FSDP2 hooks its
    pre-backward onto the root's outputs and warns (rightly) that a *view* output loses that hook to any
    in-place op; :func:`hidden_and_head` flattens outside the root, where the view is harmless.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, position_ids: Tensor):
        hidden, weight, bias = _body_and_head(self.model, input_ids, position_ids)
        if hidden._base is not None:  # a body whose output is itself a view (none of the usual decoders)
            hidden = hidden.clone()
        return hidden, weight, bias


def _body_and_head(model, input_ids, position_ids):
    out = model.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                           **body_kwargs(model, position_ids))
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    head = model.get_output_embeddings()
    return hidden, head.weight, getattr(head, "bias", None)  # [B, T, H]: hidden_and_head flattens it


class HeadInputs(NamedTuple):
    """What the fused head needs from a model for one packed batch: ``hidden`` [N, H], ``weight`` [V, H] (the
    embedding itself when tied), ``bias`` (None for most models) and the model's logit transform (``softcap``,
    ``logit_scale``: :mod:`inpo.train.lm_head`). ``kwargs()`` are the keyword arguments of
    :func:`inpo.ops.sequence_logps` / :func:`inpo.ops.preference_loss` besides hidden and weight."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    softcap: float | None = None
    logit_scale: float = 1.0

    def kwargs(self) -> dict:
        return dict(bias=self.bias, softcap=self.softcap, logit_scale=self.logit_scale)


def hidden_and_head(model, input_ids: Tensor, position_ids: Tensor) -> HeadInputs:
    """Decoder body only (``use_cache=False``: packed documents would mix otherwise) → :class:`HeadInputs`: hidden
    ``[N, H]``, LM-head weight ``[V, H]``, bias, and the model's logit transform (read from the model here, the one
    place the trainer, the precompute and the benches take it from; ValueError for a head inpo cannot reproduce).

    Under autocast the hidden states are cast to the autocast dtype (bf16 on CUDA) -- a Llama body's output is
    *fp32* even under autocast, since the residual stream adds bf16 sublayer outputs to the fp32 embeddings and
    RMSNorm keeps its input dtype -- and the weight is cast to match (differentiable casts: gradients still
    reach the fp32 parameters). Without this the fused head would run its GEMMs in fp32 ("ieee") on the GPU."""
    if isinstance(model, FusedHeadPolicy) or getattr(model, "_inpo_fused_head", False):
        hidden, weight, bias = model(input_ids, position_ids)
    else:
        hidden, weight, bias = _body_and_head(model, input_ids, position_ids)
    transform = logit_transform_of(unwrap(model))
    hidden = hidden.reshape(-1, hidden.shape[-1])
    dev = hidden.device.type
    if hidden.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        hidden = hidden.to(torch.get_autocast_dtype(dev))
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
        bias = None if bias is None else bias.to(hidden.dtype)
    return HeadInputs(hidden, weight, bias, transform.softcap, transform.logit_scale)


def unwrap(model) -> nn.Module:
    """The transformers model inside a :class:`FusedHeadPolicy` / compiled wrapper."""
    while True:
        if isinstance(model, FusedHeadPolicy):
            model = model.model
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
