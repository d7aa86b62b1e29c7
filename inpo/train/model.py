"""Policies: load a local transformers causal LM, or build the embedded default (a tiny Llama with a short SFT
warm start, cached on disk), and split a model into decoder body + LM-head weight for the fused head.

Precision: fp32 weights everywhere; on CUDA the trainer runs the body under bf16 autocast (fp32 master
weights and fp32 AdamW states -- simple and exact enough; the fused head accumulates in fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from inpo.data.chat import encode_completion
from inpo.data.packing import pack_sequences
from inpo.data.prompts import sft_examples
from inpo.data.tokenizer import default_tokenizer
from inpo.models import resolve_model
from inpo.ops import sequence_logps
from inpo.ops.attention import body_kwargs, prepare

__all__ = ["tiny_llama_config", "load_policy", "build_default_policy", "hidden_and_head", "FusedHeadPolicy",
           "default_cache_dir", "export_policy"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# The embedded default's shape: ~0.8 M parameters, small enough that SFT + 3 online iterations fit in a few
# minutes on 2 CPU cores, big enough to model the default task's short responses.
_TINY = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
             attention_dropout=0.0, rope_theta=10000.0)

# SFT warm start of the default policy (plain token-mean NLL through the fused head).
SFT_DEFAULTS = dict(steps=300, lr=3e-3, batch_size=32, warmup=20, n_examples=None)


def default_cache_dir(sub: str) -> Path:
    """``<repo>/.cache/<sub>`` when the repo is writable (a checkout), else ``~/.cache/inpo/<sub>``."""
    env = os.environ.get("INPO_CACHE_DIR")
    if env:
        return Path(env) / sub
    if os.access(REPO_ROOT, os.W_OK) and (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / ".cache" / sub
    return Path.home() / ".cache" / "inpo" / sub


def tiny_llama_config(vocab_size: int, **overrides):
    """The embedded default's ``LlamaConfig`` (tied embeddings, ~0.8 M params with a 1k vocabulary)."""
    from transformers import LlamaConfig

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    kw = dict(_TINY)
    kw.update(overrides)
    return LlamaConfig(vocab_size=vocab_size, **kw)


def load_policy(path_or_none, *, tokenizer=None, dtype=None, device="cpu", attn_implementation=None,
                default_seed: int = 0):
    """A causal LM from a local transformers directory, or (``None`` / ``"default"``) the embedded default
    (built from ``default_seed``: its random init and SFT data order).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a directory transformers cannot
    load (no/corrupt config.json or weights), naming the path.
    """
    path_or_none = resolve_model(path_or_none)  # a real-model name (smollm2) → its converted folder
    if path_or_none is None or str(path_or_none) == "default":
        if tokenizer is None:
            tokenizer = default_tokenizer()
        model = build_default_policy(tokenizer, seed=default_seed)
        if attn_implementation:
            model.set_attn_implementation(prepare(attn_implementation))
    else:
        model = _load_dir(Path(path_or_none), attn_implementation)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device)


def _load_dir(path: Path, attn_implementation=None):
    from transformers import AutoModelForCausalLM

    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist (expected a local transformers model "
                                f"directory with config.json and *.safetensors; models are never downloaded)")
    if not (path / "config.json").is_file():
        raise ValueError(f"model path {str(path)!r} has no config.json: not a transformers model directory")

    kw = {"attn_implementation": prepare(attn_implementation)} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32, **kw)
    except Exception as exc:  # corrupt json / truncated safetensors / unknown architecture
        raise ValueError(f"could not load the model at {str(path)!r} ({type(exc).__name__}: {exc}); is it a "
                         f"complete transformers causal-LM directory?") from exc
    return model


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((text + str(getattr(tokenizer, "chat_template", ""))).encode()).hexdigest()


def build_default_policy(tokenizer, *, seed: int = 0, cache_dir=None, sft: dict | None = None, verbose: bool = True,
                         shape: dict | None = None):
    """The embedded default π_ref: a tiny Llama (random init from ``seed``) warm-started by a short SFT on
    :func:`inpo.data.prompts.sft_examples`, so it is a (tiny) language model of the default task. ``shape``
    overrides keys of the tiny config (hidden_size, num_hidden_layers, ...) for a larger model of the same task.

    Built once and cached (``save_pretrained`` + tokenizer) under ``cache_dir`` (default
    ``<repo>/.cache/policy``), keyed by the config, the tokenizer, the SFT data and settings and the seed;
    later calls load it in well under a second. A read-only cache dir just means building in memory.
    """

    sft = {**SFT_DEFAULTS, **(sft or {})}
    config = tiny_llama_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **(shape or {}))
    examples = sft_examples(sft["n_examples"], seed=seed)
    key_src = json.dumps({"config": config.to_dict(), "tok": _tokenizer_fingerprint(tokenizer), "sft": sft,
                          "seed": seed, "data": hashlib.sha256(json.dumps(examples).encode()).hexdigest(),
                          "v": 1}, sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("policy")
    target = cache / f"default-{key}"
    if (target / "config.json").is_file():
        try:
            return _load_dir(target)
        except ValueError:
            shutil.rmtree(target, ignore_errors=True)  # a corrupt cache entry is rebuilt, not fatal
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if verbose:
        print(f"[inpo] building the default policy: SFT warm start, {sft['steps']} steps (once; cached in {cache})",
              flush=True)
    t0 = time.perf_counter()
    _sft_warm_start(model, tokenizer, examples, seed=seed, **{k: sft[k] for k in ("steps", "lr", "batch_size", "warmup")})
    if verbose:
        print(f"[inpo] built the default policy ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
              f"SFT {sft['steps']} steps in {time.perf_counter() - t0:.1f} s); cached at {target}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=cache))
        export_policy(model, tokenizer, tmp)
        os.replace(tmp, target)  # atomic publish; a concurrent builder's identical copy may win the race
    except OSError:
        shutil.rmtree(locals().get("tmp", target.with_suffix(".none")), ignore_errors=True)
    return model


def _sft_warm_start(model, tokenizer, examples, *, seed, steps, lr, batch_size, warmup):
    """Token-mean NLL on (prompt, response) demonstrations, through the fused head."""
    import math

    seqs = [encode_completion(tokenizer, p, r) for p, r in examples]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    order = torch.randperm(len(seqs), generator=g).tolist()
    pos = 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(seqs), generator=g).tolist(), 0
        chosen = [seqs[i] for i in order[pos:pos + batch_size]]
        pos += batch_size
        (batch,) = pack_sequences(chosen, max_tokens=10**9, pairwise=False)
        hidden, weight, bias = hidden_and_head(model, batch.input_ids, batch.position_ids)
        # The chunked torch head: the tested reference path, so the cached π_ref never depends on which
        # optional CPU backend happens to be built on this machine.
        logps = sequence_logps(hidden, weight, batch.labels, batch.cu_seqlens, bias=bias, impl="torch",
                               check_values=False)
        loss = -logps.sum() / (batch.labels != -100).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


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


def export_policy(model, tokenizer, path) -> Path:
    """``save_pretrained`` (safetensors) + the tokenizer into ``path``; transformers loads it back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
