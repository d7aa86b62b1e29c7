"""Shared test helpers: random packed problems and the CCE-style tolerance rule."""

from __future__ import annotations

import torch


def make_problem(n_seqs=None, lengths=None, h=40, v=1031, dtype=torch.float32, device="cpu", seed=0,
                 ignore_frac=0.3, bias=False, scale=1.0, all_ignored=(), max_len=60):
    """A packed batch with awkward sizes: lengths in 1..max_len, some prompt tokens ignored, optional
    fully-ignored sequences. Returns dict(hidden, weight, labels, cu_seqlens, bias)."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, max_len + 1, (n_seqs,), generator=g).tolist()
    n = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64) * scale
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    for s in all_ignored:
        labels[cu[s]:cu[s + 1]] = -100
    b = torch.randn(v, generator=g, dtype=torch.float64) * 0.1 if bias else None
    out = dict(hidden=hidden, weight=weight, labels=labels, cu_seqlens=cu, bias=b)
    return {k: (t.to(device=device, dtype=dtype) if t is not None and t.is_floating_point() else
                (t.to(device) if t is not None else None)) for k, t in out.items()}


def as_fp64(problem):
    return {k: (t.double() if t is not None and t.is_floating_point() else t) for k, t in problem.items()}


def max_abs_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# Slack of the reference-error rule, relative to the largest fp64 entry of each output: far below any real
# defect, above the accumulation-order noise of two fp32 computations (~1e-7 relative).
TINY_REL = 2.0**-20


def reference_error_excess(actual, ref_lowp, ref_fp64, *, factor=2.0, tiny_rel=TINY_REL, atol=0.0):
    """CCE's rule for one output: ``max|actual - fp64| <= factor * max|naive_same_dtype - fp64| + tiny``, with
    ``tiny = tiny_rel * max|fp64| + atol``. Returns (error, budget); the output passes when error <= budget."""
    err = max_abs_err(actual, ref_fp64)
    scale = ref_fp64.double().abs().max().item() if ref_fp64.numel() else 0.0
    budget = factor * max_abs_err(ref_lowp, ref_fp64) + tiny_rel * scale + atol
    return err, budget


def reference_error_violations(actual: dict, ref_lowp: dict, ref_fp64: dict, **rule) -> dict:
    """The outputs (e.g. ``logps``, ``dhidden``, ``dweight``, ``dbias``) that break the rule, as name -> (err,
    budget). Every key of ``actual`` is checked; a NaN anywhere is a violation. ``atol`` may be a dict per output."""
    bad = {}
    atol = rule.pop("atol", 0.0)
    for k, t in actual.items():
        err, budget = reference_error_excess(t, ref_lowp[k], ref_fp64[k], **rule,
                                             atol=atol.get(k, 0.0) if isinstance(atol, dict) else atol)
        if not err <= budget:  # NaN-safe
            bad[k] = (err, budget)
    return bad


def assert_within_reference_error(actual: dict, ref_lowp: dict, ref_fp64: dict, *, name="", **rule):
    """Assert every output of ``actual`` meets the reference-error rule (see :func:`reference_error_excess`)."""
    bad = reference_error_violations(actual, ref_lowp, ref_fp64, **rule)
    assert not bad, f"{name}: " + "; ".join(
        f"{k} max error {e:.3e} exceeds budget {b:.3e} (naive's own error x{rule.get('factor', 2.0)} + tiny)"
        for k, (e, b) in bad.items())


def assert_close_to_reference(actual, ref_lowp, ref_fp64, *, factor=2.0, atol=0.0, tiny_rel=TINY_REL, name="value"):
    """One output under the reference-error rule (see :func:`reference_error_excess`)."""
    assert_within_reference_error({name: actual}, {name: ref_lowp}, {name: ref_fp64}, factor=factor, atol=atol,
                                  tiny_rel=tiny_rel, name=name)
