"""Per-document attention for packed rows without flash-attn: ``attn_implementation="inpo_varlen"``.

Packed training rows hold several documents back to back (position ids restart at 0 at each one). With
transformers' ``sdpa`` such a row gets a full [N, N] block-causal boolean mask: the kernel does N² work per
head (for 8 documents of 2048 tokens in a 16k row, 8× the attention FLOPs that count) and cannot use the
``is_causal`` flash path. flash-attn's varlen kernels avoid both, but flash-attn is often not installed (it
is not on our GPU image). ``inpo_varlen`` runs one causal ``sdpa`` call per document instead: Σ sᵢ² work,
the fused causal kernels, no mask tensor, exact (same math as the masked call, tested against it).

The document boundaries are computed once per forward from the position ids (:func:`packed_boundaries`, one
host sync) and passed to every layer as the ``inpo_doc_bounds`` keyword, which transformers forwards from the
model call to each attention function; without it they are derived from ``position_ids`` per layer.

Only packed, cache-free forwards use the per-document path. Anything else that reaches it -- a padding mask, a
KV cache (q shorter than k), a batch of several rows -- goes to plain ``sdpa``. transformers builds no mask for
an implementation it does not know, so generation switches the model to ``sdpa`` for its duration
(:func:`sdpa_for_generation`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from inpo import _optional

__all__ = ["VARLEN", "register", "prepare", "default_implementation", "packed_boundaries",
           "varlen_attention_forward", "sdpa_for_generation", "uses_varlen", "body_kwargs"]

VARLEN = "inpo_varlen"
_REGISTERED = False


def register() -> str:
    """Make ``attn_implementation="inpo_varlen"`` known to transformers (idempotent); returns the name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(VARLEN, varlen_attention_forward)
        _REGISTERED = True
    return VARLEN


def prepare(name: str | None) -> str | None:
    """``name`` as given, after registering it with transformers when it is ``inpo_varlen``."""
    return register() if name == VARLEN else name


def default_implementation(device: torch.device) -> str:
    """The attention for packed training rows: flash-attn's varlen kernels when flash-attn really works on this
    CUDA device, else ``inpo_varlen`` (registered). Installed is not enough: a flash-attn wheel built against
    another torch fails only at import (undefined symbol), which transformers would hit at the first forward.
    Plain sdpa is never the default: packed rows would get a full [N, N] block-causal mask (N² work, no flash
    path); per-document calls measured 1.4-3.5x faster forward+backward even on CPU (8-16 documents of 40-250
    tokens per row)."""

    if device.type == "cuda" and _optional.available("flash_attn") and _optional.optional("flash_attn") is not None:
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attention_2"  # varlen kernels read the packed boundaries from the reset position ids
    return register()


def uses_varlen(model) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == VARLEN


def body_kwargs(model, position_ids: torch.Tensor) -> dict:
    """Extra keywords for a packed, cache-free body call: the document boundaries, computed once for all layers.
    Not for a compiled body: a list argument would be guarded on its values and recompile for every packing (the
    attention function then derives the boundaries itself)."""
    if not uses_varlen(model) or getattr(getattr(model, "base_model", model), "_compiled_call_impl", None) is not None:
        return {}
    return {"inpo_doc_bounds": packed_boundaries(position_ids)}


def packed_boundaries(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of the documents of one packed row, from its position ids ([1, N] or [N]): a document
    starts wherever the position id is 0 (and at token 0 whatever its id)."""
    pos = position_ids.reshape(-1)
    n = pos.numel()
    if n == 0:
        return []
    starts = (pos == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], n]))


@torch.compiler.disable  # data-dependent slicing: a compiled body calls it eagerly (one graph break per layer)
def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, inpo_doc_bounds=None, **kwargs):
    """transformers attention function: query [B, Hq, L, D], key/value [B, Hkv, L, D] → ([B, L, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    bounds = inpo_doc_bounds
    if packed and bounds is None:
        pos = kwargs.get("position_ids")
        bounds = packed_boundaries(pos) if pos is not None else None
    if not packed or bounds is None or len(bounds) <= 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    outs = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                   dropout=dropout, scaling=scaling, is_causal=True)[0] for s, e in bounds]
    return torch.cat(outs, dim=1), None


@contextmanager
def sdpa_for_generation(model):
    """Run ``model`` with ``sdpa`` inside the block when it uses ``inpo_varlen`` (generation needs the padding and
    cache masks that transformers builds only for the implementations it knows)."""
    if not uses_varlen(model):
        yield model
        return
    configs = [m.config for m in model.modules() if getattr(getattr(m, "config", None), "_attn_implementation",
                                                             None) == VARLEN]
    for c in configs:
        c._attn_implementation = "sdpa"
    try:
        yield model
    finally:
        for c in configs:
            c._attn_implementation = VARLEN
