"""Correctness of every head implementation through the public entry points, against fp64 naive."""

import importlib

import pytest
import torch

from inpo.objectives import DPO, INPO, IPO, ONPO, SPPO
from inpo.ops import preference_loss, sequence_logps
from inpo.ops.naive import segment_sum, sequence_logps_naive
from tests.helpers import as_fp64, assert_within_reference_error, make_problem, reference_error_violations


def _impl_available(impl):
    if impl == "triton":
        return importlib.util.find_spec("inpo.ops.triton_impl") is not None
    if impl == "native":
        from inpo.ops.head import native_available

        return native_available()
    return True


CPU_IMPLS = [pytest.param(i, marks=pytest.mark.skipif(not _impl_available(i), reason=f"{i} impl unavailable"))
             for i in ("torch", "triton", "native")]
ALL_IMPLS = ["naive", *CPU_IMPLS]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # bf16: CPU torch GEMMs; Triton upcasts in the interpreter


def _grads(fn, prob, keys=("hidden", "weight", "bias")):
    leaves = {k: prob[k].detach().clone().requires_grad_(True) for k in keys if prob.get(k) is not None}
    args = {**prob, **leaves}
    out = fn(args)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    (out * upstream).sum().backward()
    return out.detach(), {k: leaves[k].grad for k in leaves}


def _outputs(fn, prob):
    """Every output the reference-error rule checks: logps, dhidden, dweight (and dbias with a bias)."""
    out, grads = _grads(fn, prob)
    return {"logps": out, **{f"d{k}": g for k, g in grads.items()}}


def _run(impl, ignore_index=-100):
    def fn(p):
        return sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], bias=p["bias"], impl=impl,
                              ignore_index=ignore_index)
    return fn


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_sequence_logps_values_and_grads(impl, dtype, bias):
    """Each output's error against fp64 is at most twice naive's own error in the same dtype (+ 2^-20 of its
    scale): measured ratios are <= 1x naive's error for every impl and dtype (fp32 0.3-0.5x)."""
    prob = make_problem(n_seqs=6, h=40, v=1031, dtype=dtype, bias=bias, all_ignored=(2,), seed=3)
    out = _outputs(_run(impl), prob)
    assert out["logps"].dtype == torch.float32 and out["logps"].shape == (6,)
    assert torch.isfinite(out["logps"]).all()
    assert out["logps"][2].item() == 0.0  # fully ignored sequence
    for k in out:
        assert out[k].dtype == (torch.float32 if k == "logps" else dtype), k
    assert_within_reference_error(out, _outputs(_run("naive"), prob), _outputs(_run("naive"), as_fp64(prob)),
                                  name=f"{impl} {dtype}")


# ---- the rule can fail: broken heads, computed as perturbed fp64 references, must be rejected in every dtype
def _target_logits_only(p):
    """A head whose gradient lost its softmax term: d/dz = onehot(label) only (values are not used)."""
    z = p["hidden"] @ p["weight"].t() + (p["bias"] if p["bias"] is not None else 0.0)
    valid = p["labels"] != -100
    picked = z.gather(1, p["labels"].clamp(min=0)[:, None]).squeeze(1)
    return segment_sum(torch.where(valid, picked, 0.0), p["cu_seqlens"])


def _broken_head(p64, mutation):
    if mutation == "softmax term dropped":
        out = _outputs(_target_logits_only, p64)
        out["logps"] = _outputs(_run("naive"), p64)["logps"]  # values right, gradients wrong
        return out
    q = dict(p64)
    if mutation == "label off by one":
        lab = q["labels"].clone()
        lab[lab != -100] = (lab[lab != -100] + 1) % q["weight"].shape[0]
        q["labels"] = lab
    elif mutation == "sequence boundary shifted":  # a valid token moves from sequence s to sequence s-1
        cu = q["cu_seqlens"].clone()
        s = next(s for s in range(1, len(cu) - 1) if q["labels"][cu[s]] != -100 and cu[s + 1] - cu[s] >= 2)
        cu[s] += 1
        q["cu_seqlens"] = cu
    return _outputs(_run("naive"), q)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mutation", ["softmax term dropped", "label off by one", "sequence boundary shifted"])
def test_reference_error_rule_rejects_broken_heads(dtype, mutation):
    """The checker of the test above, fed a broken head's outputs (fp64, rounded to what an impl returns),
    rejects every output the defect touches. Measured margins on this problem: softmax term dropped 7-23x the
    budget in bf16 (48-174x fp16, >2e4x fp32); label/boundary defects >= 80x in bf16. The bf16 absolute
    tolerance this rule replaced (1e-1) let the softmax-dropped gradient through."""
    prob = make_problem(n_seqs=6, h=40, v=1031, dtype=dtype, bias=True, all_ignored=(2,), seed=3)
    lowp, ref64 = _outputs(_run("naive"), prob), _outputs(_run("naive"), as_fp64(prob))
    rounded = lambda out: {k: t.to(lowp[k].dtype) for k, t in out.items()}  # noqa: E731
    assert not reference_error_violations(rounded(ref64), lowp, ref64)  # the right answer, rounded, passes
    bad = reference_error_violations(rounded(_broken_head(as_fp64(prob), mutation)), lowp, ref64)
    touched = {"dhidden", "dweight", "dbias"} | ({"logps"} if mutation != "softmax term dropped" else set())
    assert set(bad) == touched, bad


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


# ---- values are checked on every impl, also with check_values=False (what the trainer passes) ------------------
def _bad_values(case, p):
    n = p["hidden"].shape[0]
    if case == "label >= V":
        lab = p["labels"].clone()
        lab[5] = 50
        return dict(labels=lab), r"labels must be in \[0, V=50\) or ignore_index=-100, got label 50 at token 5"
    if case == "negative label":
        lab = p["labels"].clone()
        lab[7] = -3
        return dict(labels=lab), r"got label -3 at token 7"
    if case == "cu_seqlens end":
        cu = p["cu_seqlens"].clone()
        cu[-1] = n + 2
        return dict(cu_seqlens=cu), f"cu_seqlens must start at 0 and end at N={n}, got first=0, last={n + 2}"
    cu = torch.tensor([0, 5, 3, n], dtype=torch.int32)
    return dict(cu_seqlens=cu), r"non-decreasing, got cu_seqlens\[1\]=5 > cu_seqlens\[2\]=3"


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("case", ["label >= V", "negative label", "cu_seqlens end", "cu_seqlens decreasing"])
def test_bad_values_raise_on_every_impl_without_check_values(impl, case):
    """Before: triton returned log p = -lse for a label >= V, torch a clamped finite value (check_values=False)."""
    p = _base()
    bad, match = _bad_values(case, p)
    p.update(bad)
    for check_values in (False, True):
        with pytest.raises(ValueError, match=match):
            sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], impl=impl,
                           check_values=check_values)


def test_deferred_value_check_raises_at_the_next_call():
    """The CUDA path without a host sync, driven on CPU: flags queued by one call are read by the next call
    (or raise_pending_value_errors) once the device is done, and the ValueError names the bad token."""
    from inpo.ops import checks, raise_pending_value_errors

    p = _base()
    n = p["hidden"].shape[0]
    args = (p["hidden"], p["weight"], p["labels"], p["cu_seqlens"])
    bad = p["labels"].clone()
    bad[9] = 77

    def defer(labels):
        checks.defer_value_check(checks.value_flags(labels, p["cu_seqlens"], n, 50, -100),
                                 lambda f: checks.describe_bad_values(f, n, 50, -100))

    defer(bad)
    with pytest.raises(ValueError, match=r"got label 77 at token 9 \(an earlier head call's inputs"):
        sequence_logps(*args, impl="torch", check_values=False)
    sequence_logps(*args, impl="torch", check_values=False)  # reported once, then the queue is clear
    defer(p["labels"])
    raise_pending_value_errors(wait=True)  # clean flags are dropped silently
    defer(bad)
    with pytest.raises(ValueError, match="at token 9"):
        raise_pending_value_errors(wait=True)
    assert not checks._PENDING


@pytest.mark.gpu
def test_cuda_value_check_adds_no_host_sync():
    """check_values=False on CUDA: no synchronising call (sync debug mode 'error' raises on one); the bad label is
    reported, by index, once the device has finished."""
    from inpo.ops import checks, raise_pending_value_errors

    p = make_problem(n_seqs=4, h=16, v=50, seed=1, device="cuda")
    p["labels"][6] = 50
    torch.cuda.synchronize()
    err = None
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises RuntimeError
    try:
        out = sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], impl="triton",
                             check_values=False)
        assert out.shape == (4,)
    except ValueError as e:  # legal too: Triton's own entry check found the public check's event complete
        err = e
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    if err is None:
        with pytest.raises(ValueError) as info:
            raise_pending_value_errors()
        err = info.value
    assert "got label 50 at token 6" in str(err) and "earlier head call" in str(err)
    assert not checks._PENDING  # Triton's own entry check did not queue the same tensors again


def test_sppo_targets_must_be_win_rates():
    from inpo.ops.checks import check_unit_interval

    logps, anchor = torch.zeros(4), torch.zeros(4)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\].*got 1.5 at index 2"):
        SPPO(eta=0.5)(logps, anchor_logps=anchor, targets=torch.tensor([0.0, 1.0, 1.5, 0.5]))
    with pytest.raises(ValueError, match="got nan at index 0"):
        SPPO(eta=0.5)(logps, anchor_logps=anchor, targets=torch.tensor([float("nan"), 0.2, 0.3, 0.4]))
    SPPO(eta=0.5)(logps, anchor_logps=anchor, targets=torch.tensor([0.0, 1.0, 0.25, 0.5]))  # the closed interval
    p = _base()
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\].*got -0.25 at index 3"):
        preference_loss(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], SPPO(eta=0.5), impl="torch",
                        anchor_logps=torch.zeros(4), targets=torch.tensor([0.5, 0.5, 0.5, -0.25]),
                        check_values=False)
    check_unit_interval("targets", torch.rand(5).to("meta"))  # shapes only: nothing to read


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_minus_inf_bias_over_whole_vocab_tiles(impl):
    """Masked tokens (bias = -inf over the first 1100 columns: whole tiles of every impl -- Triton's interpreter
    tiles are 512 wide, native's 1024, torch's chunks 256 here) gave NaN on torch/native/triton; naive is finite."""
    from inpo.ops import torch_impl

    v, masked = 2600, 1100
    prob = make_problem(n_seqs=4, h=16, v=v, bias=True, seed=6, max_len=20)
    prob["bias"][:masked] = float("-inf")
    valid = prob["labels"] != -100
    prob["labels"][valid] = masked + prob["labels"][valid] % (v - masked)  # targets are never masked

    def run(p):
        if impl == "torch":  # small chunks, so whole chunks are masked
            return torch_impl.sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], p["bias"],
                                             chunk_tokens=16, chunk_vocab=256)
        return _run(impl)(p)

    out = _outputs(run, prob)
    assert all(torch.isfinite(t).all() for t in out.values()), {k: int((~torch.isfinite(t)).sum())
                                                                for k, t in out.items()}
    assert (out["dbias"][:masked] == 0).all() and (out["dweight"][:masked].abs() < 1e-30).all()
    assert_within_reference_error(out, _outputs(_run("naive"), prob), _outputs(_run("naive"), as_fp64(prob)),
                                  name=f"{impl} -inf bias")


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("ignore_index", [-1, 7])  # 7: a real vocabulary id, ignored wherever it is the label
def test_non_default_ignore_index(impl, ignore_index):
    prob = make_problem(n_seqs=5, h=24, v=300, bias=True, seed=12, all_ignored=(1,))
    lab = prob["labels"]
    lab[3] = 7  # a token whose label equals ignore_index=7
    default_ignored = lab == -100
    lab[default_ignored] = ignore_index
    out = _outputs(_run(impl, ignore_index), prob)
    lowp = _outputs(_run("naive", ignore_index), prob)
    ref64 = _outputs(_run("naive", ignore_index), as_fp64(prob))
    assert out["logps"][1].item() == 0.0  # the all-ignored sequence
    assert (out["dhidden"][default_ignored | (lab == ignore_index)] == 0).all()
    assert_within_reference_error(out, lowp, ref64, name=f"{impl} ignore_index={ignore_index}")
    lab[default_ignored] = -100  # -100 is now an ordinary (out-of-range) label
    with pytest.raises(ValueError, match=f"ignore_index={ignore_index}, got label -100 at token"):
        _run(impl, ignore_index)(prob)


def test_value_check_reruns_after_an_in_place_change():
    """The dispatcher and an impl's own entry check the same tensors once; an in-place edit (version bump) or a
    new tensor is checked again."""
    p = _base()
    args = (p["hidden"], p["weight"], p["labels"], p["cu_seqlens"])
    sequence_logps(*args, impl="triton", check_values=False)
    p["labels"][4] = 99  # same tensor object, new version
    with pytest.raises(ValueError, match="got label 99 at token 4"):
        sequence_logps(*args, impl="triton", check_values=False)
    with pytest.raises(ValueError, match="got label 99 at token 4"):  # a failed check is not remembered
        sequence_logps(*args, impl="torch", check_values=False)
