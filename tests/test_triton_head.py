"""The Triton head beyond the shared suite: awkward tiles, vocabulary splits, NaN poison,
label dtypes, strided inputs, option errors; GPU tier: bf16, a big shape, peak memory.

On CPU everything runs under the Triton interpreter (conftest sets TRITON_INTERPRET=1), so shapes are small and
the tile configs below are chosen to make many ragged tiles from few programs.
"""

import os

import pytest
import torch

from inpo.kernels.configs import BAKED, KernelConfig, device_family
from inpo.ops import sequence_logps
from inpo.ops import triton_impl
from inpo.ops.naive import sequence_logps_naive
from inpo.ops.triton_impl import HeadParams
from tests.helpers import as_fp64, assert_within_reference_error, make_problem

SMALL_FWD = KernelConfig(32, 64, 16)  # H=40, V=1031, N=157 are multiples of none of these
SMALL_BWD = KernelConfig(32, 128, 16, group_n=3)
AGREE_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # two backward designs: accumulation-order noise


def _problem(**kw):
    base = dict(lengths=[1, 60, 17, 1, 33, 45], h=40, v=1031, seed=5)  # N=157, lengths 1..60
    return make_problem(**{**base, **kw})


def _run(prob, keys=("hidden", "weight", "bias"), upstream_seed=1, **options):
    """Values and grads of the Triton head (``options`` -> triton_impl) and, with ``options=None``, naive."""
    impl = options.pop("impl", "triton")
    leaves = {k: prob[k].detach().clone().requires_grad_(True) for k in keys if prob.get(k) is not None}
    p = {**prob, **leaves}
    if impl == "triton":
        out = triton_impl.sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], p["bias"], **options)
    else:
        out = sequence_logps_naive(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], p["bias"])
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    (out * up.to(out.device, out.dtype)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}, up


def _outputs(out, grads):
    return {"logps": out, **{f"d{k}": g for k, g in grads.items()}}


def _check_against_fp64(prob, out, grads, name, **rule):
    """The reference-error rule (tests/helpers.py) on values and every gradient."""
    ref_lowp, g_lowp, _ = _run(prob, impl="naive")
    ref64, g64, _ = _run(as_fp64(prob), impl="naive")
    for k in grads:
        assert grads[k].dtype == prob[k].dtype
    assert_within_reference_error(_outputs(out, grads), _outputs(ref_lowp, g_lowp), _outputs(ref64, g64), name=name,
                                  **rule)


@pytest.mark.parametrize("splits", [1, 3, 40])  # 40 > vocabulary tiles: empty splits must drop out
def test_awkward_shapes_small_tiles_and_splits(splits):
    prob = _problem(bias=True, all_ignored=(3,))
    out, grads, _ = _run(prob, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, splits=splits)
    assert out[3].item() == 0.0
    _check_against_fp64(prob, out, grads, f"splits={splits}")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunked_backward(dtype, bias, monkeypatch):
    """bwd_mode="chunked": several ragged token chunks through a NaN-poisoned dz buffer, same accuracy rule."""
    monkeypatch.setenv("INPO_POISON_OUTPUTS", "1")
    prob = _problem(dtype=dtype, bias=bias, all_ignored=(3,))
    out, grads, _ = _run(prob, bwd_mode="chunked", chunk_tokens=50, bwd_config=SMALL_BWD)
    assert all(torch.isfinite(g).all() for g in grads.values())
    _check_against_fp64(prob, out, grads, f"chunked {dtype}")
    atomic, g_atomic, _ = _run(prob, bwd_config=SMALL_BWD)
    for k in grads:  # the two backward designs agree to accumulation-order noise
        torch.testing.assert_close(grads[k].float(), g_atomic[k].float(), rtol=1e-2, atol=AGREE_ATOL[dtype])


def test_chunked_backward_frozen_inputs():
    prob = _problem(bias=True)
    _, g_all, _ = _run(prob, bwd_mode="chunked", chunk_tokens=64)
    _, g_w, _ = _run(prob, keys=("weight",), bwd_mode="chunked", chunk_tokens=64)
    _, g_h, _ = _run(prob, keys=("hidden", "bias"), bwd_mode="chunked")
    torch.testing.assert_close(g_w["weight"], g_all["weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(g_h["hidden"], g_all["hidden"], rtol=0, atol=1e-6)
    torch.testing.assert_close(g_h["bias"], g_all["bias"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    """fp16 through the interpreter's dot; bf16 through the fp32-upcast path the interpreter needs."""
    prob = _problem(dtype=dtype)
    out, grads, _ = _run(prob)
    assert out.dtype == torch.float32
    _check_against_fp64(prob, out, grads, str(dtype))


def test_nan_poisoned_outputs_are_all_written(monkeypatch):
    prob = _problem(all_ignored=(0, 2))  # ignored blocks take the no-GEMM path and must still write
    clean, g_clean, _ = _run(prob, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, splits=5)
    monkeypatch.setenv("INPO_POISON_OUTPUTS", "1")
    tok, lse = triton_impl.head_forward(prob["hidden"], prob["weight"], None, prob["labels"], -100,
                                        HeadParams(fwd_config=SMALL_FWD, splits=5))
    assert torch.isfinite(tok).all() and torch.isfinite(lse).all()
    poisoned, g_poisoned, _ = _run(prob, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, splits=5)
    assert torch.equal(poisoned, clean)
    for k in g_clean:
        assert torch.equal(g_poisoned[k], g_clean[k])


def test_ignored_blocks_are_skipped_exactly():
    """A long fully-ignored prefix (prompt tokens) skips whole tiles without changing any result."""
    prob = _problem(lengths=[90, 20, 47], all_ignored=(0,), ignore_frac=0.0)
    stats = {}
    out, grads, _ = _run(prob, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, stats=stats)
    assert stats["tiles_ignored"] >= 2 * ((1031 + 127) // 128)  # the first two 32-token blocks, every v tile
    assert stats["tiles_filtered"] == 0  # the filter is opt-in (grad_filter)
    _check_against_fp64(prob, out, grads, "ignored prefix")


def test_int32_labels_match_int64():
    prob = _problem(bias=True)
    out64, g64, _ = _run(prob)
    out32, g32, _ = _run({**prob, "labels": prob["labels"].int()})
    assert torch.equal(out32, out64)
    for k in g64:
        assert torch.equal(g32[k], g64[k])


def test_strided_inputs():
    """Non-contiguous hidden (column-major view), weight (a row-strided slice) and labels give the same result."""
    prob = _problem()
    n, h = prob["hidden"].shape
    hidden_t = prob["hidden"].t().contiguous().t()  # stride (1, N)
    big_w = torch.zeros(2 * prob["weight"].shape[0], h + 3)
    big_w[::2, 1:h + 1] = prob["weight"]
    weight_s = big_w[::2, 1:h + 1]  # stride (2(H+3), 1), offset 1
    labels_s = torch.stack([prob["labels"], prob["labels"]], 1)[:, 0]
    assert not (hidden_t.is_contiguous() or weight_s.is_contiguous() or labels_s.is_contiguous())
    ref, g_ref, _ = _run(prob)
    out, g, _ = _run({**prob, "hidden": hidden_t, "weight": weight_s, "labels": labels_s})
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-5, atol=1e-6)


def test_bias_grad_alone_and_frozen_weight():
    """Only bias (or only hidden) requiring grad takes the COMPUTE_* = False paths and stays correct."""
    prob = _problem(bias=True)
    _, g_all, _ = _run(prob)
    _, g_b, _ = _run(prob, keys=("bias",))
    _, g_h, _ = _run(prob, keys=("hidden",))
    torch.testing.assert_close(g_b["bias"], g_all["bias"], rtol=0, atol=1e-6)
    torch.testing.assert_close(g_h["hidden"], g_all["hidden"], rtol=0, atol=1e-6)
    ref64, g64, _ = _run(as_fp64(prob), impl="naive")
    torch.testing.assert_close(g_b["bias"].double(), g64["bias"], rtol=1e-4, atol=1e-5)


def test_large_logits_with_splits():
    prob = make_problem(lengths=[1, 1, 5, 30], h=16, v=700, scale=300.0, ignore_frac=0.0, seed=7)  # |z| ~ 1e4
    out, grads, _ = _run(prob, keys=("hidden", "weight"), fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, splits=4)
    ref = sequence_logps_naive(*(as_fp64(prob)[k] for k in ("hidden", "weight", "labels", "cu_seqlens")))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-2)


def test_no_tokens():
    h = torch.zeros(0, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    out = triton_impl.sequence_logps(h, w, torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.int32))
    assert out.shape == (2,) and (out == 0).all()
    out.sum().backward()
    assert (w.grad == 0).all() and h.grad.shape == (0, 8)


def test_option_and_dtype_errors():
    prob = _problem()
    args = (prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"])
    with pytest.raises(TypeError, match="unknown Triton head option"):
        triton_impl.sequence_logps(*args, filter=0.1)
    with pytest.raises(ValueError, match="grad_filter must be"):
        triton_impl.sequence_logps(*args, grad_filter=-1.0)
    with pytest.raises(ValueError, match="splits must be"):
        triton_impl.sequence_logps(*args, splits=0)
    with pytest.raises(ValueError, match="bwd_mode must be"):
        triton_impl.sequence_logps(*args, bwd_mode="fused")
    with pytest.raises(ValueError, match="chunk_tokens must be"):
        triton_impl.sequence_logps(*args, chunk_tokens=0)
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig(48, 64, 16)
    p64 = as_fp64(prob)
    with pytest.raises(TypeError, match="fp32/fp16/bf16"):
        sequence_logps(p64["hidden"], p64["weight"], p64["labels"], p64["cu_seqlens"], impl="triton")


def test_cpu_after_gpu_compile_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(triton_impl, "_is_interpreted", lambda fn: False)
    prob = _problem()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_impl.sequence_logps(prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"])


def test_cpu_interpreter_chosen_lazily_or_clear_error():
    """Fresh processes: with nothing imported, impl='triton' on CPU turns the interpreter on by itself; once
    triton was imported without it, the error says what to do."""
    import subprocess
    import sys

    code = ("import torch{pre}\nfrom inpo.ops import sequence_logps\n"
            "h = torch.randn(5, 16); w = torch.randn(40, 16); lab = torch.randint(0, 40, (5,))\n"
            "cu = torch.tensor([0, 2, 5], dtype=torch.int32)\n"
            "try:\n    print(sequence_logps(h, w, lab, cu, impl='triton').shape)\n"
            "except RuntimeError as e:\n    print('RuntimeError', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    lazy = subprocess.run([sys.executable, "-c", code.format(pre="")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "torch.Size([2])" in lazy.stdout, lazy.stderr[-2000:]
    early = subprocess.run([sys.executable, "-c", code.format(pre="\nimport triton")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert "RuntimeError" in early.stdout and "TRITON_INTERPRET=1" in early.stdout, early.stdout + early.stderr[-2000:]


def test_launches_make_the_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device, not the tensors': every launcher enters a guard for them."""
    guard = triton_impl._on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1  # built without touching CUDA
    seen = []
    real = triton_impl._on_device
    monkeypatch.setattr(triton_impl, "_on_device", lambda dev: seen.append(dev) or real(dev))
    prob = _problem()
    _run(prob, keys=("hidden", "weight"))
    _run(prob, keys=("hidden", "weight"), bwd_mode="chunked", chunk_tokens=100)
    assert len(seen) == 5 and all(d == prob["hidden"].device for d in seen), seen  # fwd, bwd, fwd, 2 dz chunks


def test_config_tables():
    assert device_family(None) == "interpreter"
    assert device_family((9, 0)) == "sm90" and device_family((8, 0)) == "sm80" and device_family((7, 5)) == "fallback"
    for fwd, bwd in BAKED.values():
        assert isinstance(fwd, KernelConfig) and isinstance(bwd, KernelConfig)


# ------------------------------------------------------------------------------------------------- GPU tier
def _cuda_problem(n, h, v, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, h, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(dtype)
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[torch.rand(n, device="cuda", generator=g) < 0.2] = -100
    lengths = [n // 8] * 7 + [n - 7 * (n // 8)]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    return dict(hidden=hidden, weight=weight, labels=labels, cu_seqlens=cu, bias=None)


@pytest.mark.gpu
def test_gpu_kernels_are_compiled():
    prob = _cuda_problem(64, 64, 256, torch.bfloat16)
    triton_impl.sequence_logps(prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"])
    from inpo.kernels import head

    assert not triton_impl._is_interpreted(head.head_fwd_kernel)


@pytest.mark.gpu
@pytest.mark.parametrize("bwd_mode", ["atomic", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_values_and_grads_vs_fp64(dtype, bwd_mode):
    prob = _cuda_problem(1031, 256, 5003, dtype)
    out, grads, _ = _run(prob, bwd_mode=bwd_mode, chunk_tokens=300)
    _check_against_fp64(prob, out, grads, f"gpu {dtype} {bwd_mode}")


@pytest.mark.gpu
def test_gpu_big_shape_and_peak_memory():
    n, h, v = 4096, 2048, 32000
    prob = _cuda_problem(n, h, v, torch.bfloat16)
    hidden = prob["hidden"].requires_grad_(True)
    weight = prob["weight"].requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = triton_impl.sequence_logps(hidden, weight, prob["labels"], prob["cu_seqlens"])
    out.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # O(N + V·H): fp32 dW/dX accumulators, the bf16 grads, O(N) buffers. At this shape V·H is comparable to
    # N·V (H = N/2), so the check against fp32 logits (N·V·4 = 524 MB) is tight: 6·V·H + 6·N·H = 443 MB.
    budget = 6 * v * h + 6 * n * h + 64 * n + (16 << 20)
    assert extra <= budget, (extra, budget)
    assert extra < 0.9 * n * v * 4, extra
    ref = torch.zeros_like(out)
    for c0 in range(0, n, 1024):  # the fp32 reference, chunked so it stays small too
        c1 = min(n, c0 + 1024)
        lab = prob["labels"][c0:c1]
        logp = torch.log_softmax(hidden[c0:c1].detach().float() @ weight.detach().float().t(), dim=1)
        tok = torch.where(lab != -100, logp.gather(1, lab.clamp(min=0)[:, None]).squeeze(1), 0.0)
        seg = torch.searchsorted(prob["cu_seqlens"][1:].long(), torch.arange(c0, c1, device="cuda"), right=True)
        ref.index_add_(0, seg, tok)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=0.5)


@pytest.mark.gpu
def test_gpu_autotune_path(monkeypatch):
    monkeypatch.setenv("INPO_AUTOTUNE", "1")
    prob = _cuda_problem(777, 128, 3001, torch.bfloat16)
    out, grads, _ = _run(prob)
    monkeypatch.delenv("INPO_AUTOTUNE")
    out_b, grads_b, _ = _run(prob)
    torch.testing.assert_close(out, out_b, rtol=1e-4, atol=1e-3)
    for k in grads:
        torch.testing.assert_close(grads[k].float(), grads_b[k].float(), rtol=2e-2, atol=2e-2)


def _column_major_past_2_31(rows, cols, dtype, seed):
    """A [rows, cols] view with strides (1, S), S·(cols-1) > 2^31: element offsets overflow int32. It lives in an
    untouched torch.empty buffer (virtual memory only: about cols·rows elements are ever written or read)."""
    stride = 2**31 // (cols - 1) + 4099
    buf = torch.empty(stride * (cols - 1) + rows, dtype=dtype)
    view = buf.as_strided((rows, cols), (1, stride))
    view.copy_(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / cols**0.5)
    return view


def test_int64_offsets_past_2_31_elements():
    """Hidden and weight as column-major views whose column offsets h·stride pass 2^31 (a tied, transposed
    embedding of a large model has stride_wh = V): int32 offset arithmetic reads far outside the tensors (with
    the int64 casts removed the interpreter segfaults), so the check runs in a child process."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    code = "from tests.test_triton_head import _strided_past_2_31_case as f; f(); print('OK')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0 and "OK" in res.stdout, (res.returncode, res.stdout[-1000:], res.stderr[-3000:])


def _strided_past_2_31_case():
    n, h, v = 24, 20, 300
    hidden = _column_major_past_2_31(n, h, torch.float16, 1)
    weight = _column_major_past_2_31(v, h, torch.float16, 2)
    assert (h - 1) * hidden.stride(1) > 2**31 and (h - 1) * weight.stride(1) > 2**31
    labels = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(3))
    cu = torch.tensor([0, 5, 24], dtype=torch.int32)
    up = torch.tensor([0.7, -1.3])
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    out = triton_impl.sequence_logps(hidden, weight, labels, cu)
    (out * up).sum().backward()
    assert hidden.stride(1) > n and weight.stride(1) > v  # the kernels really saw the strided views
    h_dense = hidden.detach().contiguous().requires_grad_(True)
    w_dense = weight.detach().contiguous().requires_grad_(True)
    ref = triton_impl.sequence_logps(h_dense, w_dense, labels, cu)
    (ref * up).sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad, h_dense.grad, rtol=0, atol=1e-3)
    torch.testing.assert_close(weight.grad, w_dense.grad, rtol=0, atol=1e-3)


@pytest.mark.parametrize("splits", [1, 4])
def test_minus_inf_bias_whole_tiles_and_splits(splits):
    """Masked tokens: a -inf bias over whole 64-wide tiles, the first tiles of a split and a whole split (4 splits
    of 17 tiles: split 0 = columns 0..319 all masked) -- the running max stays -inf there and must not give NaN."""
    prob = _problem(bias=True)
    v = prob["weight"].shape[0]
    prob["bias"][:400] = float("-inf")
    valid = prob["labels"] != -100
    prob["labels"][valid] = 400 + prob["labels"][valid] % (v - 400)
    out, grads, _ = _run(prob, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD, splits=splits)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert (grads["bias"][:400] == 0).all()
    _check_against_fp64(prob, out, grads, f"-inf bias splits={splits}")
