"""The model shapes the benches run: one table of transformers ``LlamaConfig`` fields.

A *body* (``<name>-body`` in the iteration bench) is a shape without its vocabulary: the online loop samples text,
so its vocabulary is the tokenizer's.
"""

from __future__ import annotations

MODEL_SHAPES: dict[str, dict] = {
    # GPU scale: Llama-3.2-1B.
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5),
    # CPU scale (the side-by-side CPU benches, bench.step_cpu and bench.generation): 21.6 M parameters, 32k
    # vocabulary (12.3 M of them in the tied embedding/LM head, as in small real LMs), 6 layers, GQA 6/2 heads.
    "cpu-22m": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                    num_key_value_heads=2, head_dim=64, vocab_size=32000, tie_word_embeddings=True,
                    rope_theta=10000.0, max_position_embeddings=1024, rms_norm_eps=1e-5),
    # Smoke shape: a few hundred thousand parameters, a step in milliseconds on one CPU core.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0,
                 max_position_embeddings=1024, rms_norm_eps=1e-5),
}

# The iteration bench's bodies: (shape above, overrides). The shorter context keeps a sampler's KV cache (vLLM sizes
# it for max_position_embeddings) at what the online loop's prompts and responses need.
BODIES: dict[str, tuple[str, dict]] = {"llama-1b-body": ("llama-3.2-1b", {"max_position_embeddings": 4096}),
                                       "cpu-22m-body": ("cpu-22m", {}),
                                       "tiny-body": ("tiny", {"max_position_embeddings": 512})}


def model_config(name: str):
    """A ``LlamaConfig`` of shape ``name`` (a :data:`MODEL_SHAPES` key)."""
    from transformers import LlamaConfig

    return LlamaConfig(**MODEL_SHAPES[name])


def body(name: str) -> dict:
    """The ``LlamaConfig`` fields of body ``name`` (a :data:`BODIES` key): the shape without ``vocab_size``."""
    shape, overrides = BODIES[name]
    return {**{k: v for k, v in MODEL_SHAPES[shape].items() if k != "vocab_size"}, **overrides}
