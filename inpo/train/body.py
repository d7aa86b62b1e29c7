"""The policy as the trainer sees it: the decoder body's hidden states and the LM head's weight, read in one call
(under FSDP2 through the root module, :class:`FusedHeadPolicy`), for the fused head to turn into log-probs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from inpo.ops.attention import body_kwargs

__all__ = ["FusedHeadPolicy", "hidden_and_head", "unwrap"]


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


def hidden_and_head(model, input_ids: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Decoder body only (``use_cache=False``: packed documents would mix otherwise) → hidden ``[N, H]``,
    LM-head weight ``[V, H]`` (the embedding itself when tied) and bias (``None`` for most models).

    Under autocast the hidden states are cast to the autocast dtype (bf16 on CUDA) -- a Llama body's output is
    *fp32* even under autocast, since the residual stream adds bf16 sublayer outputs to the fp32 embeddings and
    RMSNorm keeps its input dtype -- and the weight is cast to match (differentiable casts: gradients still
    reach the fp32 parameters). Without this the fused head would run its GEMMs in fp32 ("ieee") on the GPU."""
    if isinstance(model, FusedHeadPolicy) or getattr(model, "_inpo_fused_head", False):
        hidden, weight, bias = model(input_ids, position_ids)
    else:
        hidden, weight, bias = _body_and_head(model, input_ids, position_ids)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    dev = hidden.device.type
    if hidden.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        hidden = hidden.to(torch.get_autocast_dtype(dev))
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
        bias = None if bias is None else bias.to(hidden.dtype)
    return hidden, weight, bias


def unwrap(model) -> nn.Module:
    """The transformers model inside a :class:`FusedHeadPolicy` / compiled wrapper."""
    while True:
        if isinstance(model, FusedHeadPolicy):
            model = model.model
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
