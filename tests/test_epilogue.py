"""The fused preference epilogue (kernels/epilogue.py) against the one source of loss math, inpo/objectives.py.

Tier 1 feeds the epilogue kernel synthetic split partials (fast: no vocabulary sweep) and checks every output
-- lse, sequence log-probs, the per-token gradient and the mean loss -- against an fp64 torch merge followed by
``objective(...)`` and its autograd gradient, for every objective and side-input combination, with ragged,
length-1, empty and fully-ignored sequences and empty vocabulary splits. Tier 2 runs ``preference_loss``
end to end (impl="triton" in fp32/fp16 under the interpreter) against the naive fp64 reference, gradients
included. Tier 3 counts what runs: three Triton launches per forward + backward and no per-objective torch op.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from inpo.kernels.configs import KernelConfig
from inpo.objectives import DPO, INPO, IPO, OBJECTIVES, ONPO, SPPO, KernelSpec
from inpo.ops import preference_loss, response_lengths
from inpo.ops import triton_impl
from tests.helpers import as_fp64, assert_close_to_reference, make_problem

IGNORE = -100

# Every objective, and each INPO branch (ratio 1: no anchor term, ratio 0: no reference term).
OBJECTIVE_CASES = {
    "inpo": INPO(eta=0.05, ratio=1 / 3),
    "inpo-ratio1": INPO(eta=0.05, ratio=1.0),
    "inpo-ratio0": INPO(eta=0.05, ratio=0.0),
    "onpo": ONPO(eta=2.0),
    "ipo": IPO(beta=0.1),
    "dpo": DPO(beta=0.1),
    "dpo-smoothed": DPO(beta=0.5, label_smoothing=0.2),
    "sppo": SPPO(eta=0.05),
    # length-normalised (TRL 1.16's ipo and sigmoid_norm): each log-ratio divided by its sequence's token count
    "ipo-norm": IPO(beta=0.1, length_normalize=True),
    "dpo-norm": DPO(beta=0.5, label_smoothing=0.1, length_normalize=True),
}


def _side_inputs(objective, s, seed, *, absent_when_unused=True):
    """[S] fp32 ref/anchor/targets; an input the objective does not use is None (or NaN, to prove it is unread)."""
    g = torch.Generator().manual_seed(seed)
    spec = objective.kernel_spec()
    vals = {"ref": torch.randn(s, generator=g) * 20, "anchor": torch.randn(s, generator=g) * 20,
            "targets": torch.rand(s, generator=g)}
    used = {"ref": spec.uses_ref, "anchor": spec.uses_anchor, "targets": spec.uses_targets}
    unused = None if absent_when_unused else torch.full((s,), float("nan"))
    return {k: v if used[k] else unused for k, v in vals.items()}


def _synthetic_partials(lengths, splits, seed, all_ignored=(), empty_split_s=float("nan")):
    """Split partials as head_fwd_kernel writes them, with some empty splits (m = -inf, t = 0)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    labels = torch.randint(0, 1000, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = IGNORE
    for s in all_ignored:
        labels[cu[s]:cu[s + 1]] = IGNORE
    m = torch.randn(splits, n, generator=g, dtype=torch.float64) * 3 + 5
    s_ = torch.rand(splits, n, generator=g, dtype=torch.float64) * 50 + 1
    t = torch.randn(splits, n, generator=g, dtype=torch.float64) * 2
    if splits > 1:  # empty splits: every token misses some (never split 0); the head leaves m=-inf, t=0 there
        empty = torch.rand(splits, n, generator=g) < 0.4
        empty[0] = False
        m[empty] = float("-inf")
        s_[empty] = empty_split_s  # NaN: what a split of fully masked (-inf bias) tiles may hold
        t[empty] = 0.0
    part = torch.stack([m, s_, t]).float()
    return part, labels, cu


def _reference(part, labels, cu, objective, side):
    """fp64 torch merge + segment sums + objective(...) and its gradient w.r.t. the log-probs."""
    m, s_, t = part.double()
    valid = labels != IGNORE
    live = m > float("-inf")
    lse = torch.logsumexp(torch.where(live, m + torch.where(live, s_, 1.0).log(), float("-inf")), dim=0)
    lse = torch.where(valid, lse, 0.0)
    tok = torch.where(valid, t.sum(0) - lse, 0.0)
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1), (cu[1:] - cu[:-1]).long())
    logps = torch.zeros(cu.numel() - 1, dtype=torch.float64).index_add_(0, seg, tok).requires_grad_(True)
    args = [None if side[k] is None else side[k].double() for k in ("ref", "anchor", "targets")]
    lengths = torch.zeros(cu.numel() - 1, dtype=torch.float64).index_add_(0, seg, valid.double())
    loss = objective(logps, *args, lengths=lengths if objective.needs_lengths else None)
    (dlogps,) = torch.autograd.grad(loss, logps)
    return dict(loss=loss.detach(), logps=logps.detach(), lse=lse, g_tok=torch.where(valid, dlogps[seg], 0.0))


def _epilogue(part, labels, cu, objective, side):
    loss, logps, lse, g_tok = triton_impl.preference_epilogue(part, labels, cu, objective.kernel_spec(), side["ref"],
                                                              side["anchor"], side["targets"], IGNORE)
    return dict(loss=loss, logps=logps, lse=lse, g_tok=g_tok)


def _assert_matches(got, want, what):
    for k in ("lse", "logps", "g_tok", "loss"):
        assert torch.isfinite(got[k]).all(), f"{what}: non-finite {k}"
        scale = want[k].abs().max().item() if want[k].numel() else 0.0
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-5, atol=1e-5 * max(scale, 1.0),
                                   msg=lambda m: f"{what} {k}: {m}")


# ------------------------------------------------------------------------- tier 1: the epilogue kernel alone
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("name", list(OBJECTIVE_CASES))
def test_epilogue_matches_objectives(name, splits, monkeypatch):
    """lse, log-probs, per-token gradient and mean loss equal objectives.py's on an fp64 merge; NaN-poisoned
    outputs prove every element is written; lengths 1, 0 (empty) and a fully ignored sequence included."""
    monkeypatch.setenv("INPO_POISON_OUTPUTS", "1")
    objective = OBJECTIVE_CASES[name]
    lengths = [1, 37, 5, 1, 0, 12, 300, 9]  # 300 > BLOCK_T: several blocks per sequence
    part, labels, cu = _synthetic_partials(lengths, splits, seed=3, all_ignored=(5,))
    side = _side_inputs(objective, len(lengths), seed=4)
    _assert_matches(_epilogue(part, labels, cu, objective, side), _reference(part, labels, cu, objective, side), name)


@pytest.mark.parametrize("name", ["inpo-ratio1", "inpo-ratio0", "ipo", "dpo", "onpo", "ipo-norm"])
def test_unused_side_inputs_are_not_read(name):
    """An input the objective does not use (INPO ratio 1: anchor; ratio 0: ref; ONPO: ref; ...) may be
    anything, even NaN, exactly as objectives.py ignores it."""
    objective = OBJECTIVE_CASES[name]
    part, labels, cu = _synthetic_partials([4, 7, 1, 3], 2, seed=8)
    side = _side_inputs(objective, 4, seed=9, absent_when_unused=False)
    want = _reference(part, labels, cu, objective, side)
    _assert_matches(_epilogue(part, labels, cu, objective, side), want, name)


def test_dpo_saturated_margins_stay_finite_and_exact():
    """DPO at |β·h| up to ~400: the stable log-sigmoid and sigmoid of the kernel match torch's F.logsigmoid."""
    part, labels, cu = _synthetic_partials([3, 2, 4, 1, 2, 2], 1, seed=11)
    cu, labels = cu.long(), labels.int()  # the other accepted index dtypes
    ref = torch.tensor([0.0, 0.0, 4000.0, -4000.0, -4000.0, 4000.0])
    for objective in (DPO(beta=0.1), DPO(beta=0.1, label_smoothing=0.3)):
        side = dict(ref=ref, anchor=None, targets=None)
        _assert_matches(_epilogue(part, labels, cu, objective, side), _reference(part, labels, cu, objective, side),
                        repr(objective))


def test_mean_over_more_groups_than_one_reduction_block(monkeypatch):
    """The last program's mean walks GroupLoss in several BLOCK_G steps (here 16 groups per step, 35 pairs)."""
    monkeypatch.setattr(triton_impl, "_EPILOGUE_BLOCK_G", 16)
    lengths = (torch.arange(70) % 4 + 1).tolist()
    part, labels, cu = _synthetic_partials(lengths, 2, seed=12)
    objective = IPO(beta=0.1)
    side = _side_inputs(objective, 70, seed=13)
    _assert_matches(_epilogue(part, labels, cu, objective, side), _reference(part, labels, cu, objective, side), "ipo")


def test_every_objective_has_a_kernel_spec():
    for cls in OBJECTIVES.values():
        assert isinstance(cls().kernel_spec(), KernelSpec), cls
    with pytest.raises(ValueError, match="KernelSpec.loss"):
        KernelSpec(pairwise=True, loss="hinge")


# ------------------------------------------------------------------- tier 2: preference_loss end to end
SMALL_FWD = KernelConfig(16, 64, 16)
SMALL_BWD = KernelConfig(16, 64, 16, group_n=2)


def _loss_and_grads(prob, objective, side, impl, **options):
    """Loss, log-probs and input gradients of ``objective``: impl "triton" = the fused path, "triton-unfused" = the
    Triton head's sequence_logps followed by ``objective(...)`` in torch, else ``inpo.ops.preference_loss``."""
    leaves = {k: prob[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
    p = {**prob, **leaves}
    ref_dtype = torch.float64 if prob["hidden"].dtype == torch.float64 else torch.float32
    side = {k: None if v is None else v.to(ref_dtype) for k, v in side.items()}
    if impl == "triton":
        loss, logps = triton_impl.preference_loss(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], objective,
                                                  ref_logps=side["ref"], anchor_logps=side["anchor"],
                                                  targets=side["targets"], bias=p["bias"], **options)
    elif impl == "triton-unfused":
        logps = triton_impl.sequence_logps(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], p["bias"], **options)
        lengths = response_lengths(p["labels"], p["cu_seqlens"]) if objective.needs_lengths else None
        loss = objective(logps, side["ref"], side["anchor"], side["targets"], lengths)
    else:
        loss, logps = preference_loss(p["hidden"], p["weight"], p["labels"], p["cu_seqlens"], objective,
                                      ref_logps=side["ref"], anchor_logps=side["anchor"], targets=side["targets"],
                                      bias=p["bias"], impl=impl, return_logps=True)
    loss.backward()
    return dict(loss=loss.detach(), logps=logps.detach(), **{f"d{k}": v.grad for k, v in leaves.items()})


@pytest.mark.parametrize("dtype, name", [pytest.param(torch.float16, n, id=f"fp16-{n}") for n in OBJECTIVE_CASES]
                         + [pytest.param(torch.float32, n, id=f"fp32-{n}") for n in ("inpo", "dpo-smoothed", "sppo",
                                                                                    "ipo-norm")])
def test_preference_loss_end_to_end(name, dtype, monkeypatch):
    """impl="triton" (head forward + epilogue + head backward, 3 vocabulary splits, ragged tiles) against fp64:
    every output (loss, log-probs, d hidden/weight/bias) is at least as accurate as the Triton head's
    sequence_logps followed by objectives.py in torch (+ 2^-20 of the output's scale): the epilogue adds no error.
    In fp32 also the CCE rule against the naive head (<= 2x its own error). (In fp16 the head backward's own
    accuracy -- it rounds dz to fp16 for its GEMMs -- is the head tests' subject, not this one's.)"""
    monkeypatch.setenv("INPO_POISON_OUTPUTS", "1")
    objective = OBJECTIVE_CASES[name]
    prob = make_problem(lengths=[1, 9, 4, 1, 7, 6, 3, 5], h=24, v=300, seed=5, bias=True, all_ignored=(3,),
                        dtype=dtype)
    side = _side_inputs(objective, 8, seed=6)
    options = dict(splits=3, fwd_config=SMALL_FWD, bwd_config=SMALL_BWD)
    got = _loss_and_grads(prob, objective, side, "triton", **options)
    unfused = _loss_and_grads(prob, objective, side, "triton-unfused", **options)
    ref64 = _loss_and_grads(as_fp64(prob), objective, side, "naive")
    lowp = _loss_and_grads(prob, objective, side, "naive") if dtype == torch.float32 else None
    for k, v in got.items():
        assert v.dtype == unfused[k].dtype, k
        tiny = 2.0**-20 * ref64[k].double().abs().max().item()  # accumulation-order noise, far below any defect
        assert_close_to_reference(v, unfused[k], ref64[k], factor=1.0, atol=tiny, name=f"{name} {dtype} {k} vs unfused")
        if lowp is not None:
            assert_close_to_reference(v, lowp[k], ref64[k], atol=tiny, name=f"{name} {dtype} {k} vs naive")


def test_preference_loss_chunked_backward(monkeypatch):
    """bwd_mode="chunked" consumes the epilogue's g_tok too (ragged token chunks, NaN-poisoned dz buffer)."""
    monkeypatch.setenv("INPO_POISON_OUTPUTS", "1")
    objective = OBJECTIVE_CASES["inpo"]
    prob = make_problem(lengths=[1, 9, 4, 1, 7, 6, 3, 5], h=24, v=300, seed=5, bias=True, all_ignored=(3,))
    side = _side_inputs(objective, 8, seed=6)
    got = _loss_and_grads(prob, objective, side, "triton", bwd_mode="chunked", chunk_tokens=10, bwd_config=SMALL_BWD)
    atomic = _loss_and_grads(prob, objective, side, "triton", bwd_config=SMALL_BWD)
    for k in got:
        torch.testing.assert_close(got[k], atomic[k], rtol=1e-5, atol=1e-5 * atomic[k].abs().max().item(), msg=k)


def test_exactness_options_reach_the_fused_backward(monkeypatch):
    """inpo.ops.preference_loss(impl="triton", deterministic=..., grad_filter=...) on the fused path: deterministic
    selects the chunked backward (two runs bitwise equal, equal to the atomic one up to summation order), the
    filter budget reaches the atomic backward."""
    seen = []
    for name in ("head_backward", "head_backward_chunked"):
        fn = getattr(triton_impl, name)

        def spy(*args, _fn=fn, _name=name, **kwargs):
            seen.append((_name, args[7].grad_filter))  # args[7]: the HeadParams
            return _fn(*args, **kwargs)

        monkeypatch.setattr(triton_impl, name, spy)
    prob = make_problem(lengths=[3, 5, 2, 4], h=16, v=100, seed=7, bias=True)
    objective = OBJECTIVE_CASES["dpo-smoothed"]
    side = _side_inputs(objective, 4, seed=2)

    def grads(**options):
        hidden = prob["hidden"].clone().requires_grad_(True)
        loss = preference_loss(hidden, prob["weight"], prob["labels"], prob["cu_seqlens"], objective,
                               ref_logps=side["ref"], bias=prob["bias"], impl="triton", **options)
        loss.backward()
        return hidden.grad

    det = [grads(deterministic=True) for _ in range(2)]
    atomic = grads(deterministic=False, grad_filter=0.25)
    assert seen == [("head_backward_chunked", None)] * 2 + [("head_backward", 0.25)], seen
    assert torch.equal(det[0], det[1])
    torch.testing.assert_close(det[0], atomic, rtol=1e-5, atol=1e-6)


def test_gradients_flow_only_into_hidden_weight_bias():
    """ref/anchor/targets are constants (no .grad even when they require one); logps is not differentiable;
    frozen weight/bias get no gradient; a second backward (retain_graph) gives the same gradient."""
    prob = make_problem(lengths=[3, 5, 2, 4], h=16, v=100, seed=7, bias=True)
    hidden = prob["hidden"].clone().requires_grad_(True)
    side = {k: torch.randn(4, requires_grad=True) for k in ("ref", "anchor")}
    targets = torch.rand(4, requires_grad=True)
    loss, logps = triton_impl.preference_loss(hidden, prob["weight"], prob["labels"], prob["cu_seqlens"], SPPO(),
                                              ref_logps=side["ref"], anchor_logps=side["anchor"], targets=targets,
                                              bias=prob["bias"])
    assert loss.requires_grad and not logps.requires_grad
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    hidden.grad = None
    (2.0 * loss).backward()  # the upstream gradient scales g_tok
    torch.testing.assert_close(hidden.grad, 2.0 * first)
    assert all(t.grad is None for t in (*side.values(), targets))


def test_no_tokens():
    """N = 0 (every sequence empty): loss from zero log-probs, zero gradients."""
    hidden = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    cu = torch.zeros(3, dtype=torch.int32)
    ref = torch.tensor([1.0, -1.0])
    loss, logps = triton_impl.preference_loss(hidden, weight, torch.zeros(0, dtype=torch.long), cu, IPO(beta=0.5),
                                              ref_logps=ref)
    torch.testing.assert_close(loss, IPO(beta=0.5)(torch.zeros(2), ref))
    loss.backward()
    assert weight.grad.abs().max() == 0


def test_bad_objective_and_side_inputs():
    prob = make_problem(lengths=[3, 5, 2], h=16, v=100, seed=7)
    args = (prob["hidden"], prob["weight"], prob["labels"], prob["cu_seqlens"])
    with pytest.raises(TypeError, match="objective must be"):
        triton_impl.preference_loss(*args, "ipo", ref_logps=torch.zeros(3))
    with pytest.raises(ValueError, match="number of sequences must be even, got 3"):
        triton_impl.preference_loss(*args, IPO(), ref_logps=torch.zeros(3))
    with pytest.raises(ValueError, match="needs targets"):
        triton_impl.preference_loss(*args, SPPO(), anchor_logps=torch.zeros(3))
    with pytest.raises(ValueError, match=r"ref_logps must be 1-D \[S\] with S=3"):
        triton_impl.preference_loss(*args, DPO(), ref_logps=torch.zeros(4))
    with pytest.raises(ValueError, match="anchor_logps is on meta"):
        triton_impl.preference_loss(*args, SPPO(), anchor_logps=torch.zeros(3, device="meta"), targets=torch.zeros(3))
    with pytest.raises(TypeError, match="unknown Triton head option"):
        triton_impl.preference_loss(*args, SPPO(), anchor_logps=torch.zeros(3), targets=torch.zeros(3), bogus=1)


# ------------------------------------------------------------------------------ tier 3: what runs
class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


# Host-side torch ops the fused path may run besides the argument/value checks: allocation, views, dtype casts, and
# one multiply (the loss's upstream gradient times g_tok). No arithmetic of the objective, the merge or the sums.
_ALLOWED_OPS = {"empty", "zeros", "full", "detach", "_to_copy", "select", "unbind", "ones_like", "mul", "alias",
                "view", "slice", "t", "as_strided"}


def _unrecorded(fn):
    """``fn`` run outside the op recorder (its torch ops are not the loss's hot path)."""
    def wrapper(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return wrapper


def test_three_launches_and_no_per_objective_torch_ops(monkeypatch):
    """Per preference_loss forward + backward: head forward, epilogue, head backward -- one launch each, for every
    objective -- and the same short list of host-side torch ops (no loss math in torch). Argument and value checks
    (the ``check_*`` functions the entry points call) and the interpreter's own tensor copies are not counted."""
    from inpo.kernels import epilogue, head
    from inpo.ops import head as ops_head

    launches = []
    for mod, name in ((head, "head_fwd_kernel"), (head, "head_bwd_kernel"), (head, "head_dz_kernel"),
                      (epilogue, "preference_epilogue_kernel")):
        kernel = getattr(mod, name)

        def run(*args, _run=_unrecorded(kernel.run), _name=name, **kwargs):
            launches.append(_name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    for mod in (ops_head, triton_impl):
        for name in dir(mod):
            if name.startswith("check_") and callable(getattr(mod, name)):
                monkeypatch.setattr(mod, name, _unrecorded(getattr(mod, name)))
    prob = make_problem(lengths=[1, 9, 4, 1, 7, 6], h=24, v=300, seed=5, bias=True)
    per_objective = {}
    for name, objective in OBJECTIVE_CASES.items():
        side = _side_inputs(objective, 6, seed=1)
        leaves = {k: prob[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
        launches.clear()
        with _OpRecorder() as rec:
            loss = preference_loss(leaves["hidden"], leaves["weight"], prob["labels"], prob["cu_seqlens"], objective,
                                   ref_logps=side["ref"], anchor_logps=side["anchor"], targets=side["targets"],
                                   bias=leaves["bias"], impl="triton", check_values=False)
            loss.backward()
        assert launches == ["head_fwd_kernel", "preference_epilogue_kernel", "head_bwd_kernel"], (name, launches)
        assert set(rec.ops) <= _ALLOWED_OPS, (name, sorted(set(rec.ops) - _ALLOWED_OPS))
        assert rec.ops.count("mul") == 1, (name, rec.ops)
        per_objective[name] = [op for op in rec.ops if op not in ("detach", "_to_copy")]  # side inputs vary
    first = next(iter(per_objective.values()))
    assert all(ops == first for ops in per_objective.values()), per_objective


def test_epilogue_compiles_for_hopper():
    """The epilogue lowers for sm90 (atomics, barrier, volatile loads) without spills, every constexpr variant."""
    code = (
        "import json\n"
        "from inpo.kernels import epilogue\n"
        "from inpo.kernels.compile_check import compile_kernel\n"
        "rows = []\n"
        "for kind in (0, 1):\n"
        "    for pw in (True, False):\n"
        "        for ln in (False, True):\n"
        "            meta = dict(PAIRWISE=pw, LOSS_KIND=kind, USE_REF=True, USE_ANCHOR=True, USE_TARGETS=not pw,\n"
        "                        LENGTH_NORM=ln, BLOCK_T=256, BLOCK_G=1024)\n"
        "            rows.append(compile_kernel(epilogue.preference_epilogue_kernel, meta, 90, 'bf16', 4, 1))\n"
        "print(json.dumps(rows))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    tools_missing = "No such file" in proc.stderr and ("ptxas" in proc.stderr or "cuobjdump" in proc.stderr)
    if proc.returncode != 0 and tools_missing:
        pytest.skip("Triton's bundled CUDA tools are missing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert row["spill_bytes"] == 0, row


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["inpo", "dpo-smoothed", "sppo", "ipo-norm"])
def test_gpu_epilogue_matches_objectives_and_is_deterministic(name):
    """Compiled kernel on CUDA, 3000 pairs (the last-program mean across many CTAs): matches the fp64 reference
    and two runs are bitwise equal."""
    objective = OBJECTIVE_CASES[name]
    lengths = (torch.arange(6000) % 97 + 1).tolist()
    part, labels, cu = _synthetic_partials(lengths, 4, seed=21)
    side = _side_inputs(objective, len(lengths), seed=22)
    want = _reference(part, labels, cu, objective, side)
    dev = {k: None if v is None else v.cuda() for k, v in side.items()}
    runs = [_epilogue(part.cuda(), labels.cuda(), cu.cuda(), objective, dev) for _ in range(2)]
    _assert_matches({k: v.cpu() for k, v in runs[0].items()}, want, name)
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["inpo", "dpo-smoothed", "sppo", "ipo-norm"])
def test_gpu_preference_loss_bf16(name):
    """Compiled head + epilogue on CUDA in bf16 against the naive head in fp64 (CCE rule), gradients included."""
    objective = OBJECTIVE_CASES[name]
    lengths = (torch.arange(64) % 53 + 1).tolist()
    prob = make_problem(lengths=lengths, h=256, v=5000, seed=5, bias=True, all_ignored=(3,), dtype=torch.bfloat16,
                        device="cuda")
    side = {k: None if v is None else v.cuda() for k, v in _side_inputs(objective, len(lengths), seed=6).items()}
    got = _loss_and_grads(prob, objective, side, "triton")
    lowp = _loss_and_grads(prob, objective, side, "naive")
    ref64 = _loss_and_grads(as_fp64(prob), objective, side, "naive")
    for k, v in got.items():
        tiny = 2.0**-20 * ref64[k].double().abs().max().item()
        assert_close_to_reference(v, lowp[k], ref64[k], atol=tiny, name=f"{name} bf16 {k}")
