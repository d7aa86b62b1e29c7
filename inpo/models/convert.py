"""GGUF → plain HF folders. transformers loads a GGUF (``gguf_file=``, needs ``gguf`` + ``accelerate``) dequantised
to fp32 but refuses to ``save_pretrained`` it; the same state dict in a plain model built from the same config
without ``quantization_config`` saves a normal folder whose logits equal the GGUF model's (checked here before the
folder is published, and again by ``tests/test_real_model.py``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from inpo._optional import require

__all__ = ["load_gguf", "convert_gguf", "MARKER"]

MARKER = "inpo_model.json"  # written last inside the temporary folder: a published folder always has it
_CHECK_TEXT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def load_gguf(gguf: Path, dtype=torch.float32):
    """``(model, tokenizer)`` as transformers loads the GGUF file (the reference the conversion must equal)."""
    require("gguf")
    require("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model.eval(), tok


def _plain_copy(model):
    """The same weights in a model built from the config minus ``quantization_config`` (so it saves normally)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)  # every key, tied lm_head included
    plain.generation_config = model.generation_config
    return plain.eval()


@torch.no_grad()
def _check_equal(reference, folder: Path, tok) -> None:
    """The saved fp32 folder's logits must equal the GGUF model's exactly on a short chat prompt."""
    from transformers import AutoModelForCausalLM

    ids = tok(_CHECK_TEXT, return_tensors="pt").input_ids
    saved = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    want, got = reference(ids).logits, saved(ids).logits
    if not torch.equal(want, got):
        raise RuntimeError(f"the converted folder's logits differ from the GGUF model's (max abs diff "
                           f"{(want - got).abs().max().item():.3g}); not publishing {str(folder)!r}")


def convert_gguf(gguf: Path, targets: dict[str, Path], *, spec=None) -> None:
    """Write ``targets[dtype]`` (dtype "float32" / "bfloat16") from the GGUF file. Each folder is built under a
    temporary name beside it and renamed into place when complete (marker written last)."""
    reference, tok = load_gguf(gguf)
    plain = _plain_copy(reference)
    for dtype, target in targets.items():
        target = Path(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # the cache is shared by every checkout (mkdtemp makes it private)
            model = plain if dtype == "float32" else _plain_copy(reference).to(getattr(torch, dtype))
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            if dtype == "float32":
                _check_equal(reference, tmp, tok)
            info = {"source": Path(gguf).name, "dtype": dtype, "converted_by": "inpo.models.convert"}
            if spec is not None:
                info.update(package=spec.package, version=spec.version, wheel_sha256=spec.wheel_sha256)
            (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
