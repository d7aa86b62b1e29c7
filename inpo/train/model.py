"""Policies: load a local transformers causal LM, or build the embedded default (a tiny Llama with a short SFT
warm start, cached on disk), and split a model into decoder body + LM-head inputs for the fused head (weight, bias
and the model's logit transform, :mod:`inpo.train.lm_head`), checked against the model's own logits at load.

Precision: fp32 weights everywhere; on CUDA the trainer runs the body under bf16 autocast (fp32 master
weights and fp32 AdamW states -- simple and exact enough; the fused head accumulates in fp32).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor

from inpo.data.chat import encode_completion
from inpo.data.packing import pack_sequences
from inpo.data.prompts import sft_examples
from inpo.data.tokenizer import default_tokenizer
from inpo.models import resolve_model
from inpo.ops import sequence_logps
from inpo.ops.attention import prepare
from inpo.ops.transform import LogitTransform
from inpo.train.body import FusedHeadPolicy, HeadInputs, hidden_and_head, unwrap  # noqa: F401 - re-exported
from inpo.train.step import train_step
from inpo.utils.model_folder import save_model

__all__ = ["tiny_llama_config", "load_policy", "build_default_policy", "hidden_and_head", "HeadInputs",
           "FusedHeadPolicy", "check_head_matches_model", "check_packing_isolates_documents", "default_cache_dir",
           "export_policy"]

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
    load (no/corrupt config.json or weights), naming the path, or for a model whose LM head the fused head cannot
    reproduce (:func:`check_head_matches_model`, run in fp32 before any cast).
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
    check_head_matches_model(model)
    check_packing_isolates_documents(model)
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
    try:  # published atomically; a concurrent builder's identical copy may have won the race (kept)
        save_model(model, target, tokenizer, replace=False)
    except OSError:  # a read-only or full cache: the model is built in memory all the same
        pass
    return model


def _sft_warm_start(model, tokenizer, examples, *, seed, steps, lr, batch_size, warmup):
    """Token-mean NLL on (prompt, response) demonstrations, through the fused head: the trainer's own step with
    the NLL as its head loss, one packed batch per step."""
    seqs = [encode_completion(tokenizer, p, r) for p, r in examples]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    order = torch.randperm(len(seqs), generator=g).tolist()
    pos = 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(seqs), generator=g).tolist(), 0
        chosen = [seqs[i] for i in order[pos:pos + batch_size]]
        pos += batch_size
        train_step(model, pack_sequences(chosen, max_tokens=10**9, pairwise=False), None, opt, sched, {},
                   max_grad_norm=1.0, head_loss=_token_mean_nll)
    model.eval()


def _token_mean_nll(head, batch, side) -> tuple[Tensor, Tensor]:
    # The chunked torch head: the tested reference path, so the cached π_ref never depends on which optional CPU
    # backend happens to be built on this machine.
    logps = sequence_logps(head.hidden, head.weight, batch.labels, batch.cu_seqlens, impl="torch",
                           check_values=False, **head.kwargs())
    return -logps.sum() / (batch.labels != -100).sum(), logps


@torch.no_grad()
def check_head_matches_model(model, *, n_tokens: int = 8, seed: int = 0) -> float:
    """Compare the fused head's inputs (:func:`hidden_and_head`, log-softmax in fp64) with the model's own
    ``log_softmax(model(ids).logits)`` on ``n_tokens`` fixed random tokens, in the model's dtype (fp32 when loaded
    by :func:`load_policy`); returns the largest difference (NaN, unchecked, when the model's own logits are not
    finite), or raises ValueError naming the class when it exceeds 1e-3·(1 + max |log-prob|) -- far above fp32 rounding, far below what any logit transform changes. It catches
    what no attribute names (a head that is not ``lm_head(hidden)``: BERT-style prediction heads, Chameleon's
    image-token mask). Costs one forward over ``n_tokens`` tokens."""
    was_training = model.training
    model.eval()
    try:
        head = model.get_output_embeddings()
        vocab = min(head.weight.shape[0], model.get_input_embeddings().weight.shape[0])
        dev = head.weight.device
        ids = torch.randint(0, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(seed)).to(dev)
        pos = torch.arange(n_tokens, device=dev)[None]
        ref = torch.log_softmax(model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].double(), dim=-1)
        h = hidden_and_head(model, ids, pos)
    finally:
        model.train(was_training)
    name = type(unwrap(model)).__name__
    if not torch.isfinite(ref).all():  # NaN/inf weights: nothing to compare; the NaN guards name the weight
        return float("nan")
    if ref.shape[-1] != h.weight.shape[0]:
        raise ValueError(f"{name}: its logits have {ref.shape[-1]} columns but get_output_embeddings() has "
                         f"{h.weight.shape[0]} rows: the fused head cannot reproduce this model's head")
    raw = h.hidden.double() @ h.weight.double().t() + (0.0 if h.bias is None else h.bias.double())
    ours = torch.log_softmax(LogitTransform(logit_scale=h.logit_scale, softcap=h.softcap).apply(raw), dim=-1)
    err = (ours.double() - ref).abs().max().item()
    tol = 1e-3 * (1.0 + ref.abs().max().item())
    if not err <= tol:  # NaN-safe
        raise ValueError(f"{name}: the fused head's log-probs differ from the model's own logits by {err:.3g} "
                         f"(tolerance {tol:.3g}) on {n_tokens} probe tokens: this model transforms its logits in a way "
                         f"inpo does not reproduce (supported transforms: inpo/train/lm_head.py)")
    return err


@torch.no_grad()
def check_packing_isolates_documents(model, *, seed: int = 0) -> float:
    """The trainer packs documents into one row with position ids restarting at 0; an attention body then attends
    within each document (eager/sdpa masks, ``inpo_varlen``, flash-attn varlen), but recurrent and state-space
    layers (xLSTM, RecurrentGemma, Mamba hybrids such as Falcon-H1 and Granite-4) carry their state from one
    document into the next. Compare the second of two packed documents with the same document run alone and
    raise ValueError naming the class when they differ by more than 1e-4·(1 + max |hidden|); returns the
    difference. Costs two forwards of ~12 tokens."""
    was_training = model.training
    model.eval()
    try:
        dev = model.get_output_embeddings().weight.device
        vocab = model.get_input_embeddings().weight.shape[0]
        g = torch.Generator().manual_seed(seed)
        first, second = (torch.randint(0, vocab, (1, n), generator=g).to(dev) for n in (5, 7))
        pos = torch.cat([torch.arange(5), torch.arange(7)]).to(dev)[None]
        packed = hidden_and_head(model, torch.cat([first, second], dim=1), pos).hidden[5:]
        alone = hidden_and_head(model, second, pos[:, 5:]).hidden
    finally:
        model.train(was_training)
    if not torch.isfinite(alone).all():  # NaN/inf weights: nothing to compare; the NaN guards name the weight
        return float("nan")
    err = (packed.double() - alone.double()).abs().max().item()
    tol = 1e-4 * (1.0 + alone.abs().max().item())
    if not err <= tol:  # NaN-safe
        raise ValueError(f"{type(unwrap(model)).__name__}: a document packed after another gives other hidden states "
                         f"than the same document alone (max difference {err:.3g}, tolerance {tol:.3g}): its layers "
                         f"carry state across the packed documents (recurrent / state-space layers ignore the reset "
                         f"position ids inpo packs with), so training would mix documents. inpo cannot train this "
                         f"model yet")
    return err


def export_policy(model, tokenizer, path) -> Path:
    """``save_pretrained`` (safetensors) + the tokenizer as the model folder ``path`` (the one model-folder writer:
    NaN guard, free space, atomic publish); transformers loads it back."""
    return save_model(unwrap(model), path, tokenizer)
