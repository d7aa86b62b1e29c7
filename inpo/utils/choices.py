"""Names a run's config chooses among that more than one layer must know: the config validates them (train), the
samplers implement them (generation), and neither imports the other."""

from __future__ import annotations

__all__ = ["SAMPLER_BACKENDS", "SAMPLER_DTYPES"]

SAMPLER_BACKENDS = ("hf", "vllm", "auto")  # the config's ``sampler`` values (inpo.generation.make_sampler)
SAMPLER_DTYPES = ("policy", "float32", "bfloat16", "float16")  # ``sampler_dtype``: the vLLM engine's dtype
