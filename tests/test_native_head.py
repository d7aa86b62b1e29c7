"""The native C++ CPU head beyond the shared suite (tests/test_head.py): op registration (opcheck),
torch.compile without graph breaks, build-failure fallback, bf16/fp64, both parallel layouts, thread-count
independence, and the C++ side's own bounds checks."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from inpo.ops import resolve_impl, sequence_logps
from inpo.ops import native_impl
from inpo.ops.naive import sequence_logps_naive
from tests.helpers import as_fp64, assert_close_to_reference, make_problem

needs_native = pytest.mark.skipif(not native_impl.is_available(),
                                  reason=f"native head not built: {native_impl.build_error()}")


def _args(p):
    return p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], p["bias"]


def _value_and_grads(fn, p, upstream_seed=1):
    leaves = {k: p[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias") if p[k] is not None}
    q = {**p, **leaves}
    out = fn(q["hidden"], q["weight"], q["labels"], q["cu_seqlens"], q["bias"])
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    # Upstream rounded to fp32 for every path, so fp64 references see exactly what the fp32-output op sees.
    (out * up.float().to(out.dtype)).sum().backward()
    return out.detach(), {k: t.grad for k, t in leaves.items()}


def _native(h, w, lab, cu, b):
    return native_impl.sequence_logps(h, w, lab, cu, b)


def _naive(h, w, lab, cu, b):
    return sequence_logps_naive(h, w, lab, cu, b)


@needs_native
def test_opcheck_forward():
    p = make_problem(n_seqs=4, h=12, v=97, bias=True, all_ignored=(1,), seed=2)
    h, w, lab, cu, b = _args(p)
    args = (h.requires_grad_(), w.requires_grad_(), b.requires_grad_(), lab, cu, -100)
    torch.library.opcheck(torch.ops.inpo.head_forward.default, args)
    no_bias = (h, w, None, lab, cu, -100)
    torch.library.opcheck(torch.ops.inpo.head_forward.default, no_bias)


@needs_native
def test_opcheck_backward():
    p = make_problem(n_seqs=3, h=8, v=50, bias=True, seed=5)
    h, w, lab, cu, b = _args(p)
    _, lse = torch.ops.inpo.head_forward(h, w, b, lab, cu, -100)
    g = torch.randn(3)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.inpo.head_backward.default, (g, h, w, b, lab, cu, lse, -100, mask),
                              test_utils=("test_schema", "test_faketensor"))


@needs_native
def test_torch_compile_fullgraph_matches_eager():
    """Through the public entry point (dispatch included); fullgraph=True raises on any graph break."""
    p = make_problem(n_seqs=4, h=16, v=211, bias=True, seed=9)

    def public(h, w, lab, cu, b):
        return sequence_logps(h, w, lab, cu, bias=b, impl="auto", check_values=False)  # values check syncs

    targets = []

    def recording_backend(gm, example_inputs):  # the traced graph must hold the native op itself
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch.compile(public, fullgraph=True, backend=recording_backend)(*_args(p))
    assert "inpo.head_forward" in targets, targets
    compiled = torch.compile(public, fullgraph=True, dynamic=False)  # inductor: fake kernels + autograd
    out_c, grads_c = _value_and_grads(compiled, p)
    out_e, grads_e = _value_and_grads(_native, p)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-5)
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-6, atol=1e-6)


@needs_native
@pytest.mark.parametrize("n_seqs, v", [(6, 1031), (40, 150)], ids=["vocab-parallel", "token-parallel"])
def test_both_layouts_and_thread_count_independence(n_seqs, v):
    """N_valid <= V splits the vocabulary across threads, N_valid > V the tokens; both must match fp64
    naive and give the same answer with 1 and 2 threads (only the order of float sums may change)."""
    p = make_problem(n_seqs=n_seqs, h=24, v=v, bias=True, all_ignored=(0,), seed=13)
    n_valid = int((p["labels"] != -100).sum())
    assert (n_valid <= v) == (v == 1031)  # the problem really exercises the intended layout
    ref, ref_grads = _value_and_grads(_naive, as_fp64(p))
    lowp, lowp_grads = _value_and_grads(_naive, p)
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = _value_and_grads(_native, p)
    finally:
        torch.set_num_threads(before)
    out, grads = results[2]
    assert_close_to_reference(out, lowp, ref, name="logps")
    for k in grads:
        assert_close_to_reference(grads[k], lowp_grads[k], ref_grads[k], name=f"d{k}")
        # Sums of many cancelling terms (dbias): the tolerance scales with the tensor's magnitude.
        torch.testing.assert_close(results[1][1][k], grads[k], rtol=1e-5, atol=1e-6 * grads[k].abs().max().item())
    torch.testing.assert_close(results[1][0], out, rtol=1e-5, atol=1e-5)


@needs_native
def test_bf16_inputs_accumulate_in_fp32():
    p = make_problem(n_seqs=5, h=32, v=700, dtype=torch.bfloat16, bias=True, seed=21)
    out, grads = _value_and_grads(_native, p)
    lowp, lowp_grads = _value_and_grads(_naive, p)
    ref, ref_grads = _value_and_grads(_naive, as_fp64(p))
    assert out.dtype == torch.float32
    # fp32 accumulation must be at least as accurate as the bf16 naive path (its own error is the budget).
    assert_close_to_reference(out, lowp, ref, factor=1.0, name="bf16 logps")
    for k in grads:
        assert grads[k].dtype == torch.bfloat16
        assert_close_to_reference(grads[k], lowp_grads[k], ref_grads[k], factor=1.0, name=f"bf16 d{k}")


@needs_native
def test_fp64_inputs_are_exact():
    p = as_fp64(make_problem(n_seqs=4, h=16, v=300, bias=True, seed=4))
    out, grads = _value_and_grads(_native, p)
    ref, ref_grads = _value_and_grads(_naive, p)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)  # out is fp32 by contract
    for k in grads:
        assert grads[k].dtype == torch.float64
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-11)  # fp64 math throughout


@needs_native
def test_only_requested_gradients_and_noncontiguous_weight():
    p = make_problem(n_seqs=3, h=16, v=120, seed=8)
    w_t = p["weight"].t().contiguous().requires_grad_(True)  # tied-embedding style: weight is a transposed view
    h = p["hidden"]  # frozen body: no dHidden wanted
    out = native_impl.sequence_logps(h, w_t.t(), p["labels"], p["cu_seqlens"])
    out.sum().backward()
    ref_w = p["weight"].clone().requires_grad_(True)
    sequence_logps_naive(h, ref_w, p["labels"], p["cu_seqlens"]).sum().backward()
    torch.testing.assert_close(w_t.grad.t(), ref_w.grad, rtol=1e-4, atol=1e-5)
    _, lse = torch.ops.inpo.head_forward(h, p["weight"], None, p["labels"], p["cu_seqlens"], -100)
    dh, dw, db = torch.ops.inpo.head_backward(torch.ones(3), h, p["weight"], None, p["labels"], p["cu_seqlens"], lse,
                                              -100, [False, True, False])
    assert dh.numel() == 0 and db.numel() == 0 and dw.shape == p["weight"].shape


@needs_native
def test_all_tokens_ignored_and_empty_sequences():
    p = make_problem(lengths=[3, 0, 4], h=8, v=40, seed=3)
    p["labels"][:] = -100
    out, grads = _value_and_grads(_native, p)
    assert torch.equal(out, torch.zeros(3))
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


@needs_native
def test_cpp_checks_guard_memory_when_python_checks_are_skipped():
    p = make_problem(n_seqs=2, h=8, v=40, seed=1)
    bad = p["labels"].clone()
    bad[bad != -100] = 40
    op = torch.ops.inpo.head_forward  # the C++ op itself: the Python checks (ValueError) come first otherwise
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, V=40\)"):
        op(p["hidden"], p["weight"], None, bad, p["cu_seqlens"], -100)
    cu = p["cu_seqlens"].clone()
    cu[-1] += 1
    with pytest.raises(RuntimeError, match="cu_seqlens must start at 0 and end at N"):
        op(p["hidden"], p["weight"], None, p["labels"], cu, -100)
    with pytest.raises(ValueError, match=r"labels must be in \[0, V=40\)"):  # the public path names it first
        sequence_logps(p["hidden"], p["weight"], bad, p["cu_seqlens"], impl="native", check_values=False)


@needs_native
def test_auto_picks_native_on_cpu():
    assert resolve_impl("auto", torch.device("cpu")) == "native"


def test_build_failure_warns_once_and_falls_back(monkeypatch, tmp_path):
    """A machine without a working build: `auto` falls back to torch with ONE warning; an explicit
    impl='native' raises with the reason."""
    monkeypatch.setattr(native_impl, "_state", {})
    monkeypatch.setattr(native_impl, "_has_cpu_kernel", lambda: False)
    monkeypatch.setattr(native_impl, "SOURCES", (tmp_path / "missing.cpp",))
    with pytest.warns(RuntimeWarning, match="falling back to impl='torch'"):
        assert resolve_impl("auto", torch.device("cpu")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert not native_impl.is_available()
        assert resolve_impl("auto", torch.device("cpu")) == "torch"
    assert "missing.cpp" in native_impl.build_error()
    p = make_problem(n_seqs=2, h=8, v=40, seed=1)
    with pytest.raises(RuntimeError, match="impl='native' requested but the native CPU head is unavailable.*missing"):
        sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], impl="native")
    out = sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"])  # auto still works
    torch.testing.assert_close(out, sequence_logps_naive(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"]))


def test_missing_ninja_is_reported(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(native_impl, "_state", {})
    monkeypatch.setattr(native_impl, "_has_cpu_kernel", lambda: False)
    monkeypatch.setattr(native_impl, "prebuilt_library", lambda: None)  # no install-time build: the JIT path
    monkeypatch.setattr(native_impl, "jit_build_dir", lambda: tmp_path / "inpo_native_head_x")
    monkeypatch.setattr(native_impl, "_ensure_ninja_on_path", lambda: None)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="ninja is not installed"):
        assert not native_impl.is_available()


_SMALL_TILE_SCRIPT = """
import torch
from inpo.ops import native_impl
from inpo.ops.naive import sequence_logps_naive
from tests.helpers import make_problem
torch.set_num_threads(2)
for n_seqs, v in ((6, 333), (30, 40)):  # vocab- and token-parallel, many ragged tiles per partition
    p = make_problem(n_seqs=n_seqs, h=12, v=v, bias=True, all_ignored=(1,), seed=4, dtype=torch.float64)
    leaves = [p[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias")]
    refs = [p[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias")]
    out = native_impl.sequence_logps(leaves[0], leaves[1], p["labels"], p["cu_seqlens"], leaves[2])
    ref = sequence_logps_naive(refs[0], refs[1], p["labels"], p["cu_seqlens"], refs[2])
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-5)
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11)
print("OK")
"""


@needs_native
def test_small_ragged_tiles_are_exact():
    """Tiles of 7 tokens x 50 vocab (read once per process, hence the subprocess): the online log-sum-exp
    across many tiles, ragged tile edges and the partition merges give the fp64 naive answer."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "INPO_NATIVE_TILE": "7x50", "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-c", _SMALL_TILE_SCRIPT], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]


def test_bench_smoke_writes_records(tmp_path):
    from bench import head_cpu as native_bench

    out = tmp_path / "head-cpu.jsonl"
    assert native_bench.main(["--smoke", "--impls", "inpo-native,torch,aten-gemms", "--out", str(out)]) == 0

    records = [json.loads(line) for line in out.read_text().splitlines()]
    impls = [r["impl"] for r in records]
    expected = ["torch", "aten-gemms"] if not native_impl.is_available() else ["inpo-native", "torch", "aten-gemms"]
    assert impls == expected
    for r in records:
        assert r["fwd_bwd_ms"] > 0 and r["floor_ms"] > 0 and r["threads"] >= 1
        # fwd_bwd_ms / floor_ms are stored rounded to 1 us; the ratio comes from the unrounded medians.
        assert r["floor_ratio"] == pytest.approx(r["fwd_bwd_ms"] / r["floor_ms"], rel=0.02, abs=1e-3)
        assert {"device", "torch", "commit", "date"} <= r.keys()
        assert (r["n"], r["h"], r["v"]) == native_bench.SMOKE_SHAPE


def test_disable_env_falls_back(monkeypatch):
    monkeypatch.setattr(native_impl, "_state", {})
    monkeypatch.setenv(native_impl.DISABLE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="disabled by INPO_DISABLE_NATIVE=1.*falling back"):
        assert resolve_impl("auto", torch.device("cpu")) == "torch"


@needs_native
def test_forward_lse_output():
    """lse[i] = logsumexp of token i's logits for every valid token (both layouts), 0 for ignored ones."""
    for n_seqs, v in ((5, 700), (30, 60)):
        p = make_problem(n_seqs=n_seqs, h=16, v=v, bias=True, seed=6)
        logps, lse = torch.ops.inpo.head_forward(p["hidden"], p["weight"], p["bias"], p["labels"], p["cu_seqlens"],
                                                 -100)
        valid = p["labels"] != -100
        ref = torch.logsumexp(as_fp64(p)["hidden"] @ as_fp64(p)["weight"].t() + as_fp64(p)["bias"], dim=1)
        torch.testing.assert_close(lse[valid].double(), ref[valid], rtol=1e-6, atol=1e-5)
        assert torch.equal(lse[~valid], torch.zeros(int((~valid).sum())))
        assert logps.dtype == torch.float32 and lse.dtype == torch.float32
