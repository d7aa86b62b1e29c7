"""Model FLOPs and MFU against a peak measured in the same run.

Formula (decoder-only transformer, one training step = forward + backward):

    train_flops = 6 · P_matmul · tokens  +  6 · L · d_attn · Σ_i s_i²

* ``P_matmul``: parameters that take part in a matmul per token — per layer q/k/v/o projections and the gated MLP
  (3 matrices), plus the LM head (V·H). Embedding lookups are gathers (no FLOPs), norms are negligible. With tied
  embeddings the head still costs V·H per token, so it is always counted once.
* attention scores: QKᵀ and PV are 2·s²·d FLOPs each forward for a sequence of length s (d = heads·head_dim);
  a causal kernel computes only the lower triangle, so forward = 2·s²·d, training (×3 for the two backward GEMMs
  per forward GEMM) = 6·s²·d per layer. Packed sequences attend only within themselves, hence Σ s_i², not N².
  (PaLM's appendix counts 12·L·d·s per token, i.e. the full square; pass ``causal=False`` for that convention.)

MFU = train_flops / step_seconds / peak_flops, with ``peak_flops`` measured by a large bf16 GEMM on the same device
in the same run (``measure_peak_flops``), not the datasheet number: that way clocks, power caps and the exact SKU
are whatever the step itself saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def attention_train_flops(config, seq_lens: Sequence[int], *, causal: bool = True) -> int:
    """Training FLOPs of the attention score/value products over packed sequences of lengths ``seq_lens``."""
    layers = int(_cfg(config, "num_hidden_layers"))
    heads, _, head_dim = attention_dims(config)
    sq = sum(int(s) ** 2 for s in seq_lens)
    return (6 if causal else 12) * layers * heads * head_dim * sq


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


def measure_peak_flops(device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                       n: int | None = None, reps: int = 20) -> dict:
    """Dense GEMM throughput on this device, the denominator of MFU.

    CUDA: an ``n×n @ n×n`` bf16 matmul (default n = 8192: large enough to saturate an H100's tensor cores).
    CPU: fp32 with n = 512 (a smoke-mode stand-in; the CPU number is only meaningful for the same run's ratios).
    Returns dict(peak_flops, peak_tflops, gemm_n, gemm_dtype, gemm_ms).
    """
    from inpo.profiling.timing import measure

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = 8192 if device.type == "cuda" else 512
    if n < 16:
        raise ValueError(f"n must be >= 16 for a meaningful GEMM, got {n}")
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = measure(lambda: torch.matmul(a, b, out=out), device=device, warmup=3, reps=reps)
    # The fastest sample, not the median: the peak is the denominator, so the honest choice is the highest rate
    # the device showed (a lower peak would flatter the MFU).
    peak = 2.0 * n**3 / (t.min_ms / 1e3)
    del a, b, out
    return {"peak_flops": peak, "peak_tflops": peak / 1e12, "gemm_n": n, "gemm_dtype": str(dtype).replace("torch.", ""),
            "gemm_ms": t.min_ms}
