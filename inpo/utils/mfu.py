"""Model FLOPs and MFU: the one definition, used by the training loop's step records and by the benches.

Model FLOPs of one training step (decoder-only transformer, forward + backward):

    train_flops = 6 · P_matmul · tokens  +  6 · L · d_attn · Σ_i s_i²

* ``P_matmul``: parameters that take part in a matmul per token — per layer q/k/v/o projections and the gated MLP
  (3 matrices), plus the LM head (V·H). Embedding lookups are gathers (no FLOPs), norms are negligible. With tied
  embeddings the head still costs V·H per token, so it is always counted once (the fused head's 6NHV of
  shared/ALGORITHMS.md's cost model is this term's LM-head part).
* attention scores: QKᵀ and PV are 2·s²·d FLOPs each forward for a sequence of length s (d = heads·head_dim);
  a causal kernel computes only the lower triangle, so forward = 2·s²·d, training (×3 for the two backward GEMMs
  per forward GEMM) = 6·s²·d per layer. Packed sequences attend only within themselves, hence Σ s_i², not N².
  (PaLM's appendix counts 12·L·d·s per token, i.e. the full square; pass ``causal=False`` for that convention.)

MFU = train_flops / step seconds / peak, where peak is the board's dense bf16 datasheet rate
(:func:`peak_bf16_flops`; the usual convention, so numbers compare with other trainers'). A device without a
datasheet entry (CPU, an unknown GPU) has no MFU in training; a bench may then divide by a GEMM rate it measured
itself and must say so in its record (``peak_source``).
"""

from __future__ import annotations

from collections.abc import Sequence

from inpo.utils.record import device_slug

__all__ = ["attention_dims", "matmul_params", "attention_train_flops", "model_flops", "train_flops", "forward_flops",
           "mfu", "peak_bf16_flops", "step_mfu"]


def _cfg(config, name: str, default=None):
    value = getattr(config, name, default)
    if value is None:
        raise ValueError(f"config has no {name!r}: expected a transformers LlamaConfig-like object "
                         "(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size)")
    return value


def attention_dims(config) -> tuple[int, int, int]:
    """(num_attention_heads, num_key_value_heads, head_dim) of a Llama-like config."""
    heads = int(_cfg(config, "num_attention_heads"))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or _cfg(config, "hidden_size") // heads)
    return heads, kv_heads, head_dim


def matmul_params(config) -> int:
    """Parameters used in a matmul per token (projections, MLP, LM head); see the module docstring."""
    h = int(_cfg(config, "hidden_size"))
    inter = int(_cfg(config, "intermediate_size"))
    layers = int(_cfg(config, "num_hidden_layers"))
    vocab = int(_cfg(config, "vocab_size"))
    heads, kv_heads, head_dim = attention_dims(config)
    per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + 3 * h * inter
    return layers * per_layer + vocab * h


def _attention_flops(config, sum_sq: float, causal: bool) -> float:
    layers = int(_cfg(config, "num_hidden_layers"))
    heads, _, head_dim = attention_dims(config)
    return (6 if causal else 12) * layers * heads * head_dim * sum_sq


def attention_train_flops(config, seq_lens: Sequence[int], *, causal: bool = True) -> int:
    """Training FLOPs of the attention score/value products over packed sequences of lengths ``seq_lens``."""
    return int(_attention_flops(config, sum(int(s) ** 2 for s in seq_lens), causal))


def model_flops(config, tokens: float, sum_sq: float, *, causal: bool = True) -> float:
    """Training FLOPs of ``tokens`` tokens in sequences whose squared lengths sum to ``sum_sq`` (the form a
    trainer has after summing over micro-batches and ranks)."""
    if tokens < 0 or sum_sq < 0:
        raise ValueError(f"tokens and sum_sq must be >= 0, got tokens={tokens}, sum_sq={sum_sq}")
    return 6 * matmul_params(config) * tokens + _attention_flops(config, sum_sq, causal)


def train_flops(config, seq_lens: Sequence[int], *, causal: bool = True) -> int:
    """Model FLOPs of one forward+backward over packed sequences (see the module docstring)."""
    if any(int(s) < 0 for s in seq_lens):
        raise ValueError(f"seq_lens must be non-negative token counts, got {list(seq_lens)[:8]}")
    tokens = sum(int(s) for s in seq_lens)
    return 6 * matmul_params(config) * tokens + attention_train_flops(config, seq_lens, causal=causal)


def forward_flops(config, seq_lens: Sequence[int], *, causal: bool = True) -> int:
    """Model FLOPs of one forward (a third of ``train_flops``): precompute passes and generation prefill."""
    return train_flops(config, seq_lens, causal=causal) // 3


def mfu(flops: float, seconds: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None when no peak is known)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not peak_flops:
        return None
    return flops / seconds / peak_flops


# Dense bf16 peak FLOP/s (datasheet, without sparsity). SXM parts; the PCIe / NVL boards share the slug but not the
# clocks (H100 PCIe 756, H100/H200 NVL 835 TFLOP/s).
_PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l40s": 362e12, "b200": 2250e12}
_PEAK_BF16_VARIANT = {("h100", "pcie"): 756e12, ("h100", "nvl"): 835e12, ("h200", "nvl"): 835e12}


def peak_bf16_flops(name: str) -> float | None:
    """Dense bf16 datasheet peak of the CUDA device called ``name`` (``torch.cuda.get_device_name``), None when
    this table does not know the board (or for a CPU)."""
    name = name.lower()
    slug = device_slug(name)
    for (s, variant), peak in _PEAK_BF16_VARIANT.items():
        if s == slug and variant in name:
            return peak
    return _PEAK_BF16.get(slug)


def step_mfu(config, *, tokens: float, sum_sq: float, seconds: float, device_name: str, world: int = 1) -> float | None:
    """MFU of one training step over ``world`` identical devices called ``device_name``: ``tokens`` and ``sum_sq``
    are the step's totals over all ranks. None when the board's peak is unknown or ``config`` is not
    Llama-like (a trainer logs no MFU then rather than a wrong one)."""
    peak = peak_bf16_flops(device_name)
    if peak is None or seconds <= 0:
        return None
    try:
        flops = model_flops(config, tokens, sum_sq)
    except (ValueError, TypeError):
        return None
    return mfu(flops, seconds, peak * world)
