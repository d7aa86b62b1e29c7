"""Every argument of the public head entry points is checked before any work (issue 23): a TypeError or
ValueError naming the argument, its value or shape, and what was expected -- never an AttributeError or an
IndexError from inside, and never an error blaming another argument."""

from __future__ import annotations

import pytest
import torch

from inpo.objectives import INPO, IPO, SPPO
from inpo.ops import preference_loss, sequence_logps
from tests.helpers import make_problem

N_SEQS = 4


def _base():
    p = make_problem(n_seqs=N_SEQS, h=8, v=50, seed=1, bias=True)
    n = p["hidden"].shape[0]
    return dict(hidden=p["hidden"], weight=p["weight"], labels=p["labels"], cu_seqlens=p["cu_seqlens"], bias=p["bias"],
                n=n)


META = torch.device("meta")

# (argument, how to break it, exception, message pattern) -- shared by both entry points
COMMON = [
    ("hidden", lambda p: p["hidden"].tolist(), TypeError, "hidden must be a torch.Tensor, got list"),
    ("hidden", lambda p: p["hidden"].numpy(), TypeError, "hidden must be a torch.Tensor, got ndarray"),
    ("hidden", lambda p: p["hidden"][0], ValueError, r"hidden must be 2-D \[N, H\] .*got shape \(8,\)"),
    ("hidden", lambda p: p["hidden"].long(), TypeError, "hidden must be a floating tensor .*got dtype torch.int64"),
    ("weight", lambda p: None, TypeError, "weight must be a torch.Tensor, got NoneType"),
    ("weight", lambda p: p["weight"][None], ValueError, r"weight must be 2-D \[V, H\].*got shape \(1, 50, 8\)"),
    ("weight", lambda p: p["weight"][:, :5], ValueError, r"weight must be \[V, H\] with H=8.*got shape \(50, 5\)"),
    ("weight", lambda p: p["weight"][:0], ValueError, r"V >= 1.*got shape \(0, 8\)"),
    ("weight", lambda p: p["weight"].double(), TypeError, "weight dtype torch.float64 must match hidden dtype"),
    ("weight", lambda p: p["weight"].to(META), ValueError, "weight is on meta but hidden is on cpu"),
    ("labels", lambda p: p["labels"].tolist(), TypeError, "labels must be a torch.Tensor, got list"),
    ("labels", lambda p: p["labels"][None], ValueError, r"labels must be 1-D \[N\] with N=\d+.*got shape \(1, \d+\)"),
    ("labels", lambda p: p["labels"][1:], ValueError, r"labels must be 1-D \[N\] with N=\d+"),
    ("labels", lambda p: p["labels"].float(), TypeError, "labels must be int64 .*got dtype torch.float32"),
    ("labels", lambda p: p["labels"].to(META), ValueError, "labels is on meta but hidden is on cpu"),
    ("labels", lambda p: torch.full_like(p["labels"], 50), ValueError, r"labels must be in \[0, V=50\).*label 50"),
    ("cu_seqlens", lambda p: p["cu_seqlens"].tolist(), TypeError, "cu_seqlens must be a torch.Tensor, got list"),
    ("cu_seqlens", lambda p: torch.tensor(p["n"], dtype=torch.int32), ValueError,
     r"cu_seqlens must be 1-D \[S\+1\] with S >= 1, got shape \(\)"),
    ("cu_seqlens", lambda p: p["cu_seqlens"][None], ValueError,
     r"cu_seqlens must be 1-D \[S\+1\] with S >= 1, got shape \(1, 5\)"),
    ("cu_seqlens", lambda p: p["cu_seqlens"][:1], ValueError, r"cu_seqlens must be 1-D \[S\+1\] with S >= 1"),
    ("cu_seqlens", lambda p: p["cu_seqlens"].float(), TypeError, "cu_seqlens must be int32 .*got dtype torch.float32"),
    ("cu_seqlens", lambda p: p["cu_seqlens"].to(META), ValueError, "cu_seqlens is on meta but hidden is on cpu"),
    ("cu_seqlens", lambda p: p["cu_seqlens"] + 1, ValueError, "cu_seqlens must start at 0 and end at N="),
    ("bias", lambda p: [0.0] * 50, TypeError, "bias must be a torch.Tensor or None, got list"),
    ("bias", lambda p: p["bias"][:7], ValueError, r"bias must be 1-D \[V\] with V=50, got shape \(7,\)"),
    ("bias", lambda p: p["bias"].long(), TypeError, "bias must be a floating tensor .*got dtype torch.int64"),
    ("bias", lambda p: p["bias"].to(META), ValueError, "bias is on meta but hidden is on cpu"),
    ("ignore_index", lambda p: -100.0, TypeError, "ignore_index must be an int .*got float -100.0"),
    ("ignore_index", lambda p: True, TypeError, "ignore_index must be an int .*got bool True"),
    ("impl", lambda p: 3, TypeError, "impl must be a str, one of .*got int 3"),
    ("impl", lambda p: "cuda", ValueError, "impl must be one of .*got 'cuda'"),
    ("check_values", lambda p: "yes", TypeError, "check_values must be True or False, got str 'yes'"),
    ("grad_filter", lambda p: 1.5, ValueError, "grad_filter must be None .*got 1.5"),
    ("deterministic", lambda p: "yes", TypeError, "deterministic must be None .*got 'yes'"),
    ("softcap", lambda p: -1.0, ValueError, "softcap must be a finite number > 0 .*got -1.0"),
    ("logit_scale", lambda p: "0.5", ValueError, "logit_scale must be a finite number > 0 .*got '0.5'"),
]

PREFERENCE_ONLY = [
    ("objective", lambda p: "ipo", TypeError, "objective must be an inpo.objectives.Objective .*got str"),
    ("ref_logps", lambda p: [0.0] * N_SEQS, TypeError, "ref_logps must be a torch.Tensor or None, got list"),
    ("ref_logps", lambda p: torch.zeros(N_SEQS + 1), ValueError, r"ref_logps must be 1-D \[S\] with S=4.*got shape \(5,\)"),
    ("ref_logps", lambda p: torch.zeros(1, N_SEQS), ValueError, r"ref_logps must be 1-D \[S\] with S=4.*\(1, 4\)"),
    ("ref_logps", lambda p: torch.zeros(N_SEQS, dtype=torch.long), TypeError,
     "ref_logps must be a floating tensor .*got dtype torch.int64"),
    ("ref_logps", lambda p: torch.zeros(N_SEQS, device=META), ValueError, "ref_logps is on meta but hidden is on cpu"),
    ("return_logps", lambda p: 1, TypeError, "return_logps must be True or False, got int 1"),
]


def _call(entry, p, **override):
    args = {k: p[k] for k in ("hidden", "weight", "labels", "cu_seqlens", "bias")}
    kw = dict(impl="torch")
    for k, v in override.items():
        (args if k in args else kw).__setitem__(k, v)
    pos = [args.pop(k) for k in ("hidden", "weight", "labels", "cu_seqlens")]
    if entry == "sequence_logps":
        return sequence_logps(*pos, **args, **kw)
    kw.setdefault("ref_logps", torch.zeros(N_SEQS))
    objective = kw.pop("objective", IPO(beta=0.1))
    return preference_loss(*pos, objective, **args, **kw)


@pytest.mark.parametrize("entry", ["sequence_logps", "preference_loss"])
@pytest.mark.parametrize("arg, bad, exc, match", COMMON, ids=[f"{a}-{i}" for i, (a, *_) in enumerate(COMMON)])
def test_every_argument_is_checked(entry, arg, bad, exc, match):
    p = _base()
    assert _call(entry, p) is not None  # the unbroken call works
    with pytest.raises(exc, match=match):
        _call(entry, p, **{arg: bad(p)})


@pytest.mark.parametrize("arg, bad, exc, match", PREFERENCE_ONLY, ids=[f"{a}-{i}" for i, (a, *_) in
                                                                        enumerate(PREFERENCE_ONLY)])
def test_preference_loss_side_arguments(arg, bad, exc, match):
    p = _base()
    with pytest.raises(exc, match=match):
        _call("preference_loss", p, **{arg: bad(p)})


@pytest.mark.parametrize("side", ["anchor_logps", "targets"])
def test_other_side_inputs_are_checked_like_ref_logps(side):
    p = _base()
    objective = SPPO(eta=0.5) if side == "targets" else INPO(eta=0.1)
    for bad, exc, match in [([0.5] * N_SEQS, TypeError, f"{side} must be a torch.Tensor or None, got list"),
                            (torch.zeros(3), ValueError, rf"{side} must be 1-D \[S\] with S=4"),
                            (torch.zeros(N_SEQS, dtype=torch.int32), TypeError, f"{side} must be a floating tensor")]:
        other = dict(anchor_logps=torch.zeros(N_SEQS), targets=torch.full((N_SEQS,), 0.5))
        other[side] = bad
        with pytest.raises(exc, match=match):
            _call("preference_loss", p, objective=objective, **other)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\].*got 1.5 at index 2"):
        _call("preference_loss", p, objective=SPPO(eta=0.5), anchor_logps=torch.zeros(N_SEQS),
              targets=torch.tensor([0.5, 0.5, 1.5, 0.5]))


def test_issue_23_cases():
    """The three reported: hidden as a list (AttributeError before), a 0-d cu_seqlens (IndexError before), a 2-D
    cu_seqlens (blamed ref_logps before)."""
    p = _base()
    args = (p["weight"], p["labels"])
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor, got list"):
        preference_loss(p["hidden"].tolist(), *args, p["cu_seqlens"], IPO(), ref_logps=torch.zeros(N_SEQS))
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D .*got shape \(\)"):
        preference_loss(p["hidden"], *args, torch.tensor(5), IPO(), ref_logps=torch.zeros(N_SEQS))
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D .*got shape \(1, 5\)"):
        preference_loss(p["hidden"], *args, p["cu_seqlens"][None], IPO(), ref_logps=torch.zeros(N_SEQS))
