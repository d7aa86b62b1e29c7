"""Correctness of every head implementation through the public entry points, against fp64 naive."""

import importlib

import pytest
import torch

from inpo.objectives import DPO, INPO, IPO, ONPO, SPPO
from inpo.ops import preference_loss, sequence_logps
from inpo.ops.naive import sequence_logps_naive
from tests.helpers import as_fp64, assert_close_to_reference, make_problem


def _impl_available(impl):
    if impl == "triton":
        return importlib.util.find_spec("inpo.ops.triton_impl") is not None
    if impl == "native":
        from inpo.ops.head import native_available

        return native_available()
    return True


CPU_IMPLS = [pytest.param(i, marks=pytest.mark.skipif(not _impl_available(i), reason=f"{i} impl unavailable"))
             for i in ("torch", "triton", "native")]
DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 2e-2}


def _grads(fn, prob, keys=("hidden", "weight", "bias")):
    leaves = {k: prob[k].detach().clone().requires_grad_(True) for k in keys if prob.get(k) is not None}
    args = {**prob, **leaves}
    out = fn(args)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    (out * upstream).sum().backward()
    return out.detach(), {k: leaves[k].grad for k in leaves}


def _run(impl):
    def fn(p):
        return sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"], impl=impl)
    return fn


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_sequence_logps_values_and_grads(impl, dtype, bias):
    prob = make_problem(n_seqs=6, h=40, v=1031, dtype=dtype, bias=bias, all_ignored=(2,), seed=3)
    prob["cu_seqlens"] = prob["cu_seqlens"]
    out, grads = _grads(_run(impl), prob)
    ref_lowp, grads_lowp = _grads(_run("naive"), prob)
    ref64, grads64 = _grads(_run("naive"), as_fp64(prob))
    assert out.dtype == torch.float32 and out.shape == (6,)
    assert torch.isfinite(out).all()
    assert out[2].item() == 0.0  # fully ignored sequence
    assert_close_to_reference(out, ref_lowp, ref64, atol=TOL[dtype], name=f"{impl} logps")
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close_to_reference(grads[k], grads_lowp[k], grads64[k], atol=TOL[dtype], name=f"{impl} d{k}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_length_one_sequences_and_large_logits(impl):
    prob = make_problem(lengths=[1, 1, 5, 1], h=16, v=257, scale=300.0, ignore_frac=0.0, seed=7)  # |logits| ~ 1e3-1e4
    out = sequence_logps(prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"], impl=impl)
    ref = sequence_logps_naive(**{k: v for k, v in as_fp64(prob).items() if k != "bias"})
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-2)


OBJECTIVES = [INPO(eta=0.05, ratio=1 / 3), INPO(eta=0.05, ratio=0.0), ONPO(eta=0.5), IPO(beta=0.1),
              DPO(beta=0.1, label_smoothing=0.1), SPPO(eta=0.5)]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: repr(o))
def test_preference_loss_all_objectives(impl, objective):
    prob = make_problem(n_seqs=8, h=24, v=300, seed=11)
    g = torch.Generator().manual_seed(5)
    side = dict(ref_logps=-torch.rand(8, generator=g) * 50, anchor_logps=-torch.rand(8, generator=g) * 50,
                targets=torch.rand(8, generator=g))

    def fn(p, impl_):
        return preference_loss(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], objective, impl=impl_,
                               **{k: (v.double() if p["hidden"].dtype == torch.float64 else v) for k, v in side.items()})

    loss, grads = _grads(lambda p: fn(p, impl), prob, keys=("hidden", "weight"))
    loss64, grads64 = _grads(lambda p: fn(p, "naive"), as_fp64(prob), keys=("hidden", "weight"))
    assert loss.dim() == 0
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-4, atol=1e-4)
    for k in grads:
        torch.testing.assert_close(grads[k].double(), grads64[k], rtol=1e-3, atol=1e-4 * max(1.0, grads64[k].abs().max().item()))


def test_return_logps():
    prob = make_problem(n_seqs=4, seed=2)
    loss, logps = preference_loss(prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"], IPO(beta=0.1),
                                  ref_logps=torch.zeros(4), impl="torch", return_logps=True)
    assert not logps.requires_grad and logps.shape == (4,)
    torch.testing.assert_close(logps, sequence_logps(prob["hidden"], prob["weight"], prob["labels"],
                                                     prob["cu_seqlens"], impl="naive"))


def _base():
    return make_problem(n_seqs=4, h=8, v=50, seed=1)


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.update(hidden=p["hidden"][None]), "hidden must be 2-D"),
    (lambda p: p.update(weight=p["weight"][:, :5]), "weight must be"),
    (lambda p: p.update(weight=p["weight"].double()), "weight dtype"),
    (lambda p: p.update(labels=p["labels"][:-1]), "labels must be 1-D"),
    (lambda p: p.update(labels=p["labels"].float()), "labels must be int64"),
    (lambda p: p.update(labels=torch.full_like(p["labels"], 50)), "labels must be in \\[0, V=50\\)"),
    (lambda p: p.update(cu_seqlens=p["cu_seqlens"] + 1), "cu_seqlens must start at 0"),
    (lambda p: p.update(cu_seqlens=torch.tensor([0, 5, 3, p["hidden"].shape[0]], dtype=torch.int32)), "non-decreasing"),
    (lambda p: p.update(bias=torch.zeros(7)), "bias must be 1-D"),
])
def test_bad_inputs(mutate, match):
    p = _base()
    mutate(p)
    with pytest.raises((ValueError, TypeError), match=match):
        sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"], impl="torch")


def test_bad_impl_objective_and_pairs():
    p = _base()
    args = (p["hidden"], p["weight"], p["labels"], p["cu_seqlens"])
    with pytest.raises(ValueError, match="impl must be one of"):
        sequence_logps(*args, impl="cuda")
    with pytest.raises(TypeError, match="objective must be"):
        preference_loss(*args, "inpo")
    with pytest.raises(ValueError, match="anchor_logps"):
        preference_loss(*args, INPO(), ref_logps=torch.zeros(4))
    with pytest.raises(ValueError, match="ref_logps must be 1-D \\[S\\] with S=4"):
        preference_loss(*args, IPO(), ref_logps=torch.zeros(5))
    odd = make_problem(n_seqs=3, h=8, v=50)
    with pytest.raises(ValueError, match="even"):
        preference_loss(odd["hidden"], odd["weight"], odd["labels"], odd["cu_seqlens"], IPO(), ref_logps=torch.zeros(3))


def test_torch_impl_chunking_is_exact():
    """Small chunks (many vocab/token tiles, ragged edges) give the same answer as one big tile."""
    from inpo.ops import torch_impl

    prob = make_problem(n_seqs=5, h=12, v=333, seed=4, bias=True)
    args = (prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"], prob["bias"])
    big = torch_impl.sequence_logps(*args, chunk_tokens=10_000, chunk_vocab=10_000)
    small = torch_impl.sequence_logps(*args, chunk_tokens=7, chunk_vocab=50)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-4)
