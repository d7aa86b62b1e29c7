"""The model's logit transform (softcap, logit scale) in every head impl, against fp64 naive (issue 21).

The tolerance is the suite's reference-error rule (tests/helpers.py): each output's error against fp64 is at most
twice naive's own error in the same dtype plus 2^-20 of its scale. The problems put the raw logits well into
tanh's curved part (|raw| up to ~15 against caps of 2-4), so a missing cap, a missing derivative or a scale applied
on one side only is far outside that budget (``test_rule_rejects_broken_transforms``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from inpo.objectives import DPO, IPO, SPPO
from inpo.ops import preference_loss, sequence_logps
from inpo.ops.naive import segment_sum
from inpo.ops.transform import IDENTITY, LogitTransform, logit_transform
from tests.helpers import as_fp64, assert_within_reference_error, make_problem, reference_error_violations
from tests.test_head import CPU_IMPLS, _grads

TRANSFORMS = {"softcap": dict(softcap=3.0), "scale": dict(logit_scale=0.3), "divide": dict(logit_scale=1 / 7),
              "scale+softcap": dict(softcap=2.0, logit_scale=2.5)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # bf16: CPU GEMMs; Triton upcasts in the interpreter


def _problem(dtype, bias, seed=3):
    # hidden x4: raw logits of std ~4, max ~15 -- deep into tanh's curvature for caps of 2-4.
    return make_problem(n_seqs=5, h=32, v=517, dtype=dtype, bias=bias, all_ignored=(2,), seed=seed, scale=4.0,
                        max_len=30)


def _run(impl, **transform):
    def fn(p):
        return sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"], impl=impl,
                              **transform)
    return fn


def _outputs(fn, prob):
    out, grads = _grads(fn, prob)
    return {"logps": out, **{f"d{k}": g for k, g in grads.items()}}


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transformed_values_and_grads(impl, dtype, name):
    """logps, dHidden, dWeight and dBias of every impl within the reference-error rule of fp64 naive, for each
    transform, in fp32, fp16 and bf16 (the bias is there: it sits inside the scale and the cap)."""
    t = TRANSFORMS[name]
    prob = _problem(dtype, bias=True)
    out = _outputs(_run(impl, **t), prob)
    assert out["logps"][2].item() == 0.0 and torch.isfinite(out["logps"]).all()
    assert_within_reference_error(out, _outputs(_run("naive", **t), prob),
                                  _outputs(_run("naive", **t), as_fp64(prob)), name=f"{impl} {dtype} {name}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("objective", [DPO(beta=0.1, label_smoothing=0.1), IPO(beta=0.1), SPPO(eta=0.5)],
                         ids=repr)
def test_preference_loss_with_a_transform(impl, objective):
    """The fused loss (Triton: the epilogue kernel on the transformed partials) and its gradients, fp32, against
    fp64 naive under the reference-error rule."""
    prob = make_problem(n_seqs=6, h=32, v=517, seed=8, scale=4.0, max_len=30)
    g = torch.Generator().manual_seed(5)
    side = dict(ref_logps=-torch.rand(6, generator=g, dtype=torch.float64) * 50,
                anchor_logps=-torch.rand(6, generator=g, dtype=torch.float64) * 50,
                targets=torch.rand(6, generator=g, dtype=torch.float64))

    def run(impl_):
        def fn(p):
            kw = {k: v.to(p["hidden"].dtype) for k, v in side.items()}
            return preference_loss(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], objective, impl=impl_,
                                   softcap=2.5, logit_scale=1.5, **kw)
        return fn

    out = _outputs(run(impl), prob)
    assert out["logps"].dim() == 0
    assert_within_reference_error(out, _outputs(run("naive"), prob), _outputs(run("naive"), as_fp64(prob)),
                                  name=f"{impl} {objective!r}")


@pytest.mark.parametrize("impl", ["naive", *CPU_IMPLS])
def test_identity_arguments_change_nothing(impl):
    """softcap=None, logit_scale=1.0 (what a Llama gets) is bit for bit the head without them."""
    prob = make_problem(n_seqs=4, h=24, v=300, bias=True, seed=6)
    base = _outputs(lambda p: sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"],
                                             impl=impl), prob)
    same = _outputs(_run(impl, softcap=None, logit_scale=1.0), prob)
    for k in base:
        assert torch.equal(base[k], same[k]), k


@pytest.mark.parametrize("impl", ["naive", *CPU_IMPLS])
def test_saturated_cap_and_masked_tokens(impl):
    """|raw| ~ 1e3 (tanh saturated: sech² underflows to 0 without NaN) and a -inf bias column, which the cap turns
    into -softcap as transformers computes it (tanh(-inf) = -1): values and gradients finite and equal to fp64."""
    prob = make_problem(lengths=[1, 7, 3], h=16, v=257, scale=300.0, ignore_frac=0.0, bias=True, seed=7)
    prob["bias"][::5] = float("-inf")
    prob["labels"][prob["labels"] % 5 == 0] += 1  # no target on a masked column
    t = dict(softcap=4.0, logit_scale=0.5)
    out = _outputs(_run(impl, **t), prob)
    ref = _outputs(_run("naive", **t), as_fp64(prob))
    for k in out:
        assert torch.isfinite(out[k]).all(), k
        torch.testing.assert_close(out[k].double(), ref[k], rtol=1e-4, atol=1e-4 * max(1.0, ref[k].abs().max().item()))


# ---- the rule can fail: broken transforms, computed as perturbed fp64 references, are rejected in every dtype
class _BrokenGrad(torch.autograd.Function):
    """raw -> transform(raw) whose backward uses ``grad_fn`` instead of the true derivative."""

    @staticmethod
    def forward(ctx, raw, transform, grad_fn):
        ctx.save_for_backward(raw)
        ctx.grad_fn = grad_fn
        return transform.apply(raw)

    @staticmethod
    def backward(ctx, g):
        (raw,) = ctx.saved_tensors
        return g * ctx.grad_fn(raw), None, None


def _broken(p, transform, mutation):
    """fp64 sequence log-probs of a head whose transform is broken by ``mutation``."""
    raw = p["hidden"] @ p["weight"].t() + p["bias"]
    c, s = transform.softcap, transform.logit_scale
    if mutation == "tanh derivative dropped":  # backward as if there were no cap: d/draw = s
        z = _BrokenGrad.apply(raw, transform, lambda r: torch.full_like(r, s))
    elif mutation == "scale only in the forward":  # backward forgets the multiplier: sech² only
        z = _BrokenGrad.apply(raw, transform, lambda r: 1 / torch.cosh(r * s / c) ** 2)
    elif mutation == "no cap":
        z = raw * s
    else:  # "cap before the scale"
        z = torch.tanh(raw / c) * c * s
    lp = torch.log_softmax(z, dim=-1)
    valid = p["labels"] != -100
    picked = lp.gather(1, p["labels"].clamp(min=0)[:, None]).squeeze(1)
    return segment_sum(torch.where(valid, picked, 0.0), p["cu_seqlens"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mutation", ["tanh derivative dropped", "scale only in the forward", "no cap",
                                      "cap before the scale"])
def test_rule_rejects_broken_transforms(dtype, mutation):
    """The checker of the tests above, fed a broken transform's outputs (fp64, rounded to what an impl returns),
    rejects every output the defect touches; the right answer, rounded the same way, passes."""
    t = TRANSFORMS["scale+softcap"]
    transform = LogitTransform(**t)
    prob = _problem(dtype, bias=True)
    lowp, ref64 = _outputs(_run("naive", **t), prob), _outputs(_run("naive", **t), as_fp64(prob))
    rounded = lambda out: {k: v.to(lowp[k].dtype) for k, v in out.items()}  # noqa: E731
    assert not reference_error_violations(rounded(ref64), lowp, ref64)
    bad = reference_error_violations(rounded(_outputs(lambda p: _broken(p, transform, mutation), as_fp64(prob))),
                                     lowp, ref64)
    grads_only = mutation in ("tanh derivative dropped", "scale only in the forward")
    touched = {"dhidden", "dweight", "dbias"} | (set() if grads_only else {"logps"})
    assert set(bad) == touched, bad


@pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="interpreter tier: run with the GPU hidden (CUDA_VISIBLE_DEVICES=)")
def test_grad_filter_bound_carries_the_scale():
    """The opt-in filter with a transform: it skips tiles by the transformed softmax mass, and the gradients move
    by at most the documented per-row bound times logit_scale (sech² <= 1)."""
    from inpo.kernels.configs import KernelConfig
    from tests.test_head_exactness import _check_filter_bound, _spread_problem

    prob = _spread_problem(torch.float32)
    up = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    t = dict(transform=LogitTransform(logit_scale=1.5, softcap=20.0))
    cfg = dict(bwd_config=KernelConfig(16, 256, 16, group_n=2), fwd_config=KernelConfig(16, 1024, 16))
    exact, filt = {}, {}
    out0, g0 = _grads_with(prob, up, dict(**t, **cfg, stats=exact))
    out1, g1 = _grads_with(prob, up, dict(**t, **cfg, stats=filt, grad_filter=0.05))
    assert exact["tiles_filtered"] == 0 and filt["tiles_filtered"] > 0
    assert torch.equal(out0, out1)
    _check_filter_bound(prob, up, 0.05 * 1.5, g0, g1)


def _grads_with(prob, up, kw):
    from inpo.ops import triton_impl

    leaves = {k: prob[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
    out = triton_impl.sequence_logps(leaves["hidden"], leaves["weight"], prob["labels"], prob["cu_seqlens"],
                                     leaves["bias"], **kw)
    (out * up.to(out.dtype)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


# ---- the transform's own math and its argument checks
def test_transform_derivative_is_the_autograd_one():
    raw = torch.linspace(-40, 40, 2001, dtype=torch.float64, requires_grad=True)
    t = LogitTransform(logit_scale=0.7, softcap=3.0)
    t.apply(raw).sum().backward()
    z, d = t.apply_with_grad_(raw.detach().clone())
    torch.testing.assert_close(z, t.apply(raw.detach()))
    torch.testing.assert_close(t.apply_(raw.detach().clone()), t.apply(raw.detach()))
    torch.testing.assert_close(d, raw.grad, rtol=1e-8, atol=0)  # autograd's 1 - tanh² cancels near saturation
    e = torch.exp(-2 * (raw.detach() * 0.7 / 3.0).abs())
    torch.testing.assert_close(d, 0.7 * 4 * e / (1 + e) ** 2, rtol=1e-13, atol=0)  # sech² without cancellation
    assert IDENTITY.identity and not t.identity and logit_transform() is IDENTITY


@pytest.mark.parametrize("kw, match", [
    (dict(softcap=0.0), "softcap must be a finite number > 0"),
    (dict(softcap=-30.0), "softcap must be a finite number > 0"),
    (dict(softcap=math.inf), "softcap must be a finite number > 0"),
    (dict(softcap=math.nan), "softcap must be a finite number > 0"),
    (dict(softcap="30"), "softcap must be a finite number > 0.*'30'"),
    (dict(softcap=True), "softcap must be a finite number > 0.*True"),
    (dict(logit_scale=0.0), "logit_scale must be a finite number > 0"),
    (dict(logit_scale=-0.0625), "logit_scale must be a finite number > 0.*-0.0625"),
    (dict(logit_scale=None), "logit_scale must be a finite number > 0.*None"),
    (dict(logit_scale=math.nan), "logit_scale must be a finite number > 0"),
])
@pytest.mark.parametrize("entry", ["sequence_logps", "preference_loss"])
def test_bad_transform_arguments(kw, match, entry):
    p = make_problem(n_seqs=2, h=8, v=50, seed=1)
    args = (p["hidden"], p["weight"], p["labels"], p["cu_seqlens"])
    with pytest.raises(ValueError, match=match):
        if entry == "sequence_logps":
            sequence_logps(*args, impl="torch", **kw)
        else:
            preference_loss(*args, IPO(beta=0.1), ref_logps=torch.zeros(2), impl="torch", **kw)


needs_gpu_compiled = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                        reason="compiled Triton kernels (the GPU tier runs without the interpreter)")


@pytest.mark.gpu
@needs_gpu_compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("deterministic", [False, True])
def test_gpu_transformed_values_and_grads(dtype, name, deterministic):
    """Compiled kernels on a GPU (atomic and chunked backward), bf16 included, under the same rule."""
    t = TRANSFORMS[name]
    prob = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in
            make_problem(n_seqs=9, h=96, v=5003, dtype=dtype, bias=True, all_ignored=(2,), seed=4, scale=4.0).items()}

    def triton(p):
        return sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"], impl="triton",
                              deterministic=deterministic, **t)

    out = _outputs(triton, prob)
    assert_within_reference_error(out, _outputs(_run("naive", **t), prob),
                                  _outputs(_run("naive", **t), as_fp64(prob)), name=f"gpu {dtype} {name}")
