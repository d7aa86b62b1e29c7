"""The training step: reduces the loss on a fixed batch, tied and untied heads, packing-invariant gradients."""

import copy

import pytest
import torch

from inpo.data.packing import pack_sequences
from inpo.objectives import DPO, INPO, SPPO
from inpo.train.loop import precompute_logps
from inpo.train.model import hidden_and_head, tiny_llama_config
from inpo.train.optim import cosine_schedule, make_optimizer
from inpo.train.step import sequence_logps_of, train_step


def tiny_model(tied: bool, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def pair_seqs(n_pairs: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2 * n_pairs):
        lp, lr = torch.randint(2, 7, (2,), generator=g).tolist()
        out.append((torch.randint(3, 64, (lp,), generator=g).tolist(), torch.randint(3, 64, (lr,), generator=g).tolist() + [2]))
    return out


def _run(model, seqs, objective, side, *, steps, max_tokens, lr=1e-2):
    opt = make_optimizer(model, lr=lr)
    sched = cosine_schedule(opt, total_steps=steps, warmup_ratio=0.0)
    units = len(seqs) // (2 if objective.pairwise else 1)
    out = []
    for _ in range(steps):
        micro = pack_sequences(seqs, max_tokens=max_tokens, pairwise=objective.pairwise)
        assert sum(mb.n_units for mb in micro) == units
        out.append(train_step(model, micro, objective, opt, sched, side, impl="torch"))
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_step_reduces_loss_tied_and_untied(tied):
    model = tiny_model(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    seqs = pair_seqs(6)
    ref = precompute_logps(model, seqs, max_tokens=10_000, impl="torch")
    side = {"ref_logps": ref, "anchor_logps": ref.clone()}
    head_before = model.lm_head.weight.detach().clone()
    stats = _run(model, seqs, INPO(eta=0.5, ratio=1 / 3), side, steps=15, max_tokens=10_000)
    assert stats[-1]["loss"] < 0.5 * stats[0]["loss"]
    assert stats[-1]["margin"] > stats[0]["margin"]  # chosen pulled above rejected, toward 1/(2η) = 1
    assert not torch.equal(model.lm_head.weight, head_before)  # the fused head's weight gradient arrives
    for key in ("loss", "margin", "grad_norm", "lr", "tokens", "units"):
        assert key in stats[0]
    assert stats[0]["units"] == 6 and stats[0]["tokens"] == sum(len(p) + len(r) for p, r in seqs)


def test_gradient_independent_of_packing():
    """Micro-batches are weighted by their share of pairs: 1 vs many micro-batches give the same step."""
    seqs = pair_seqs(8, seed=1)
    base = tiny_model(True, seed=1)
    ref = precompute_logps(base, seqs, max_tokens=10_000, impl="torch") - 0.3
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    sa = _run(a, seqs, DPO(beta=0.5), {"ref_logps": ref}, steps=3, max_tokens=10_000)
    sb = _run(b, seqs, DPO(beta=0.5), {"ref_logps": ref}, steps=3, max_tokens=30)
    for x, y in zip(sa, sb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_per_sequence_objective_and_logps_of():
    model = tiny_model(False, seed=2)
    seqs = pair_seqs(3, seed=2)
    (batch,) = pack_sequences(seqs, max_tokens=10_000, pairwise=False)
    lp = sequence_logps_of(model, batch, impl="torch")
    assert lp.shape == (6,) and (lp < 0).all() and not lp.requires_grad
    hidden, weight, _ = hidden_and_head(model, batch.input_ids, batch.position_ids)
    assert hidden.shape == (batch.n_tokens, 32) and weight.shape == (64, 32)
    targets = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.6, 0.4])
    stats = _run(model, seqs, SPPO(eta=1.0), {"anchor_logps": lp.clone(), "targets": targets}, steps=10,
                 max_tokens=10_000)
    assert stats[-1]["loss"] < stats[0]["loss"]
    after = sequence_logps_of(model, batch, impl="torch") - lp
    # SPPO pushes log π/π_t toward (P̂ - 1/2)/η: up for winners, down for losers
    assert after[0] > after[1] and after[2] > after[3]


def test_activation_checkpointing_gives_the_same_step():
    seqs = pair_seqs(4, seed=4)
    base = tiny_model(True, seed=4)
    ref = precompute_logps(base, seqs, max_tokens=10_000, impl="torch")
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    if hasattr(b, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        b.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        b.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    flag = "is_activation_checkpointing" if hasattr(type(b), "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(b, flag) and not getattr(a, flag)
    side = {"ref_logps": ref - 0.1, "anchor_logps": ref}
    sa = _run(a, seqs, INPO(eta=0.5), side, steps=2, max_tokens=40)
    sb = _run(b, seqs, INPO(eta=0.5), side, steps=2, max_tokens=40)
    for x, y in zip(sa, sb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6) and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_compiled_body_matches_eager():
    seqs = pair_seqs(4, seed=5)
    base = tiny_model(False, seed=5)
    ref = precompute_logps(base, seqs, max_tokens=10_000, impl="torch")
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    b.base_model.compile(dynamic=True)
    sa = _run(a, seqs, DPO(beta=0.5), {"ref_logps": ref - 0.2}, steps=2, max_tokens=10_000)
    sb = _run(b, seqs, DPO(beta=0.5), {"ref_logps": ref - 0.2}, steps=2, max_tokens=10_000)
    for x, y in zip(sa, sb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)


@pytest.mark.gpu
def test_step_on_cuda_bf16_autocast_reduces_loss():
    """GPU path: bf16 autocast body, fp32 master weights, the Triton head (impl="auto")."""
    model = tiny_model(True).cuda()
    seqs = pair_seqs(8)
    ref = precompute_logps(model, seqs, max_tokens=10_000)
    opt = make_optimizer(model, lr=1e-2)
    sched = cosine_schedule(opt, total_steps=10, warmup_ratio=0.0)
    stats = [train_step(model, pack_sequences(seqs, max_tokens=64), INPO(eta=0.5), opt, sched,
                        {"ref_logps": ref, "anchor_logps": ref}) for _ in range(10)]
    assert next(model.parameters()).dtype == torch.float32
    assert stats[-1]["loss"] < 0.5 * stats[0]["loss"]


def test_hidden_and_head_follow_autocast_dtype():
    """Under autocast (bf16 on CUDA) a Llama body still returns fp32 hidden states (fp32 residual stream): the
    fused head must get them in the autocast dtype with a differentiable cast of the fp32 weight, not fp32."""
    model = tiny_model(True, seed=6)
    (batch,) = pack_sequences(pair_seqs(2, seed=6), max_tokens=10_000, pairwise=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, weight, bias = hidden_and_head(model, batch.input_ids, batch.position_ids)
    assert hidden.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and bias is None
    (hidden.float().sum() + weight.float().sum()).backward()
    assert model.lm_head.weight.dtype == torch.float32 and model.lm_head.weight.grad is not None
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None  # through the hidden cast into the body
    hidden, weight, _ = hidden_and_head(model, batch.input_ids, batch.position_ids)  # no autocast: fp32 stays
    assert hidden.dtype == weight.dtype == torch.float32


def test_flash_attention_only_when_it_imports(monkeypatch):
    """On CUDA flash_attention_2 is picked only when flash-attn actually imports (an ABI-broken wheel is common)."""
    import types

    import transformers.utils

    import inpo._optional
    from inpo.online import _attn_impl
    from inpo.train.config import TrainConfig

    cfg, cuda = TrainConfig(), torch.device("cuda", 0)
    monkeypatch.setattr(inpo._optional, "available", lambda name: True)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setattr(inpo._optional, "optional", lambda name, warn=True: None)  # installed, fails to import
    assert _attn_impl(cfg, cuda) == "inpo_varlen"  # no working flash-attn: per-document sdpa, not an [N, N] mask
    monkeypatch.setattr(inpo._optional, "optional", lambda name, warn=True: types.ModuleType(name))
    assert _attn_impl(cfg, cuda) == "flash_attention_2"
    assert _attn_impl(cfg, torch.device("cpu")) == "inpo_varlen"  # flash-attn is CUDA-only


def test_cuda_step_records_reset_peak_memory_and_mfu(tmp_path, monkeypatch):
    """On CUDA each step record holds that step's peak (stats reset before the step) and an MFU: the model FLOPs of
    inpo.utils.mfu (6 · matmul params · tokens + 6 · layers · heads · head_dim · Σ s², counted here by hand for the
    tiny config) over the board's dense bf16 datasheet peak (PCIe/NVL boards share the h100 slug but not the peak)."""
    import types

    from inpo.train import loop
    from inpo.utils.mfu import peak_bf16_flops

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", device)) or 123)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cfg = types.SimpleNamespace(batch_pairs=2, epochs=1, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95),
                                adam_epsilon=1e-8, lr_scheduler_type="inpo_cosine", warmup_steps=None,
                                warmup_ratio=0.0, min_lr_ratio=0.0, seed=0, max_tokens=10_000, max_grad_norm=1.0,
                                impl="torch", max_steps=None, checkpoint_every=0, keep_checkpoints=1,
                                head_options=dict)
    run = loop.RunContext(cfg=cfg, out=tmp_path, device=torch.device("cuda", 0))
    model, seqs = tiny_model(True, seed=7), pair_seqs(4, seed=7)
    ref = precompute_logps(model, seqs, max_tokens=10_000, impl="torch")
    loop.train_phase(run, model, seqs, {"ref_logps": ref, "anchor_logps": ref}, INPO(eta=0.5), iteration=0)
    steps = [r for r in run.records if r["kind"] == "step"]
    assert len(steps) == 2 and [c[0] for c in calls] == ["reset", "peak"] * 2
    assert all(r["peak_mem_bytes"] == 123 for r in steps)
    # hidden 32, 4 heads (2 kv) of 8, MLP 64, 2 layers, vocab 64 (tied: the head still counts once, the embedding
    # lookup not at all): per layer q,o 2·32·32 + k,v 2·32·16 + MLP 3·32·64 = 9216; ×2 layers + 64·32 = 20480.
    lens = [len(p) + len(r) for p, r in seqs]  # the two steps together train every sequence once
    flops = 6 * 20480 * sum(lens) + 6 * 2 * 4 * 8 * sum(s * s for s in lens)
    assert sum(r["tokens"] for r in steps) == sum(lens)
    assert sum(r["mfu"] * r["step_time_s"] * 756e12 for r in steps) == pytest.approx(flops, rel=1e-6)
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_bf16_flops("Tesla T4") is None
    assert peak_bf16_flops("NVIDIA H200 NVL") == 835e12 and peak_bf16_flops("cpu-x86_64-2c") is None


def test_nccl_session_sets_the_device_before_init_and_names_it_in_the_barrier(monkeypatch):
    import torch.distributed as dist

    from inpo.train.distributed import distributed_session

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: calls.append(("barrier", kw.get("device_ids"))))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a: calls.append(("destroy",)))
    with distributed_session() as is_main:
        assert not is_main
    assert calls == [("set_device", 1), ("init", "nccl"), ("barrier", [1]), ("destroy",)]
