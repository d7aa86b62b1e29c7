"""The bottom package inpo/utils: records and environment, rank/world, MFU."""

from __future__ import annotations

import pytest
import torch

from inpo.utils import dist
from inpo.utils.mfu import (attention_train_flops, forward_flops, matmul_params, mfu, model_flops, peak_bf16_flops,
                            step_mfu, train_flops)
from inpo.utils.record import device_name, device_slug, environment_info


# ---- mfu: model FLOPs and the datasheet peak -----------------------------------------------------------------------------------------------------

def _llama1b():
    from transformers import LlamaConfig

    # Llama-3.2-1B's shape (bench/lib/shapes.py holds the same fields for the benches)
    return LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True)


def test_matmul_params_of_llama_3_2_1b():
    cfg = _llama1b()
    # Llama-3.2-1B: 1.236 B parameters with tied embeddings, of which 262.7 M are the embedding; the head reuses
    # that matrix as a matmul, and the norms (~0.07 M) take no matmul. So matmul params = total - norms.
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert matmul_params(cfg) == total - norms
    assert 1.23e9 < matmul_params(cfg) < 1.24e9


def test_train_flops_formula():
    cfg = _llama1b()
    p = matmul_params(cfg)
    # one 2048-token sequence: 6·P·s + 6·L·d·s² (causal)
    expected = 6 * p * 2048 + 6 * 16 * 2048 * 2048**2
    assert train_flops(cfg, [2048]) == expected
    assert attention_train_flops(cfg, [2048], causal=False) == 2 * attention_train_flops(cfg, [2048])
    # packing: attention is per sequence, so two 1024 halves cost less than one 2048 sequence
    assert train_flops(cfg, [1024, 1024]) < train_flops(cfg, [2048])
    assert forward_flops(cfg, [2048]) == expected // 3
    with pytest.raises(ValueError, match="seq_lens"):
        train_flops(cfg, [-1])


def test_mfu_and_errors():
    assert mfu(100.0, 1.0, 400.0) == pytest.approx(0.25)
    assert mfu(100.0, 1.0, None) is None
    with pytest.raises(ValueError, match="seconds"):
        mfu(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        matmul_params(object())




def test_cpu_run_is_labelled_cpu():
    assert device_name("cpu").startswith("cpu-")
    info = environment_info("cpu")
    assert info["device"].startswith("cpu-")
    for key in ("torch", "triton", "transformers", "commit", "date", "driver"):
        assert key in info


def test_model_flops_is_train_flops_from_sums():
    """The trainer's form (token and squared-length totals over micro-batches and ranks) equals the per-sequence
    form."""
    cfg = _llama1b()
    lens = [17, 300, 2048, 5]
    assert model_flops(cfg, sum(lens), sum(s * s for s in lens)) == train_flops(cfg, lens)
    with pytest.raises(ValueError, match="tokens"):
        model_flops(cfg, -1, 0)


def test_datasheet_peaks_and_step_mfu():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12 and peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla T4") is None and peak_bf16_flops(device_name("cpu")) is None
    cfg = _llama1b()
    flops = train_flops(cfg, [2048, 1024])
    got = step_mfu(cfg, tokens=3072, sum_sq=2048**2 + 1024**2, seconds=0.5, device_name="NVIDIA H100 80GB HBM3",
                   world=2)
    assert got == pytest.approx(flops / 0.5 / (2 * 989e12))
    # no MFU rather than a wrong one: an unknown board, a non-Llama config
    assert step_mfu(cfg, tokens=1, sum_sq=1, seconds=1.0, device_name="Tesla T4") is None
    assert step_mfu(object(), tokens=1, sum_sq=1, seconds=1.0, device_name="NVIDIA H100 80GB HBM3") is None


# ---- dist: rank and world ------------------------------------------------------------------------------------

def test_rank_world_without_a_process_group():
    assert not torch.distributed.is_initialized()
    assert (dist.get_rank(), dist.get_world_size(), dist.rank_world()) == (0, 1, (0, 1))
    assert dist.is_main() and not dist.is_distributed()


def test_rank_world_read_the_process_group(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 4)
    assert dist.rank_world() == (3, 4) and dist.is_distributed() and not dist.is_main()


# ---- record --------------------------------------------------------------------------------------------------

def test_device_slugs():
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100" and device_slug("NVIDIA H200") == "h200"
    assert device_slug("cpu-x86_64-2c") == "cpu" and device_slug("Tesla T4") == "tesla-t4"
