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


def assert_close_to_reference(actual, ref_lowp, ref_fp64, *, factor=2.0, atol=1e-5, rtol=0.0, name="value"):
    """CCE's rule: the implementation's error against fp64 must not exceed ``factor`` times the naive
    path's own error in the same input dtype, plus a small constant."""
    err = max_abs_err(actual, ref_fp64)
    budget = factor * max_abs_err(ref_lowp, ref_fp64) + atol + rtol * ref_fp64.double().abs().max().item()
    assert err <= budget, f"{name}: max error {err:.3e} exceeds budget {budget:.3e} (naive's own error x{factor} + tol)"
