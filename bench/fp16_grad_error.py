"""``python -m bench.fp16_grad_error``: how far the CPU torch and naive heads' fp16 gradients are from fp64, per element.

What README "Gradient filter (opt-in)" states about fp16 accuracy is measured here. For each problem (packed
sequences, logits ~ ±30, fp16 inputs) and each path it records, over dHidden and dWeight (and dBias):

* ``beyond_one_rounding``: elements with |got − fp64| > 2^-10·|fp64| + 2^-24 + 2^-20·max|fp64|, i.e. more than one
  fp16 rounding of the exact value (plus fp16 subnormals and fp32 summation noise where a sum cancels);
* ``max_over_one_rounding``: the largest ratio of the error to that bound;
* ``max_over_dz_bound``: the same with the rounding of dz to fp16 before the backward GEMMs added to the bound,
  2^-11·(|dz| @ |W|) for dHidden, 2^-11·(|dz|ᵀ @ |X|) for dWeight, 2^-11·Σ|dz| for dBias (naive rounds dz once, as
  tensor cores need; the CPU torch path keeps dz in fp32).

Deterministic (no timing): the numbers do not depend on machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench.lib.outputs import output_problem
from inpo.ops import torch_impl
from inpo.ops.naive import sequence_logps_naive

PROBLEMS = [  # (lengths, H, V, seed): the first is tests/test_head_exactness.py's problem
    ([9, 40, 1, 23], 40, 1031, 4), ([9, 40, 1, 23], 40, 1031, 5), ([9, 40, 1, 23], 40, 1031, 6),
    ([60, 3, 77, 31, 18], 64, 2053, 7), ([128, 128], 128, 4099, 8),
]


def _problem(lengths, h, v, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return dict(hidden=(torch.randn(n, h, generator=g, dtype=torch.float64) * 30).half(),
                weight=(torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5).half(),
                bias=(torch.randn(v, generator=g, dtype=torch.float64) * 0.1).half(), labels=labels, cu_seqlens=cu,
                up=torch.randn(len(lengths), generator=g, dtype=torch.float64))


def _grads(fn, p, dtype):
    leaves = {k: p[k].detach().to(dtype).clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
    out = fn(leaves["hidden"], leaves["weight"], p["labels"], p["cu_seqlens"], leaves["bias"])
    (out * p["up"].to(out.dtype)).sum().backward()
    return {k: t.grad for k, t in leaves.items()}


def _dz_allowance(p):
    """2^-11·|dz| carried through each backward GEMM (fp64): what rounding dz to fp16 can move each element by."""
    x, w, b = (p[k].double() for k in ("hidden", "weight", "bias"))
    prob = torch.softmax(x @ w.t() + b, dim=1)
    valid = p["labels"] != -100
    dz = prob.clone()
    dz[valid.nonzero().squeeze(1), p["labels"][valid]] -= 1.0
    lengths = (p["cu_seqlens"][1:] - p["cu_seqlens"][:-1]).long()
    g = torch.where(valid, p["up"].repeat_interleave(lengths), 0.0).abs()
    dz = dz.abs() * g[:, None]
    return {"hidden": 2.0**-11 * dz @ w.abs(), "weight": 2.0**-11 * dz.t() @ x.abs(), "bias": 2.0**-11 * dz.sum(0)}


def measure(p) -> dict:
    exact = _grads(sequence_logps_naive, p, torch.float64)
    allowance = _dz_allowance(p)
    paths = {"naive": sequence_logps_naive,
             "torch": lambda *a: torch_impl.sequence_logps(*a, chunk_tokens=17, chunk_vocab=300)}
    out = {}
    for name, fn in paths.items():
        got = _grads(fn, p, torch.float16)
        total = beyond = 0
        worst = worst_dz = 0.0
        for k, ref in exact.items():
            err = (got[k].double() - ref).abs()
            bound = 2.0**-10 * ref.abs() + 2.0**-24 + 2.0**-20 * ref.abs().max()
            total += err.numel()
            beyond += int((err > bound).sum())
            worst = max(worst, (err / bound).max().item())
            worst_dz = max(worst_dz, (err / (bound + allowance[k])).max().item())
        out[name] = dict(elements=total, beyond_one_rounding=beyond, max_over_one_rounding=worst,
                         max_over_dz_bound=worst_dz)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fp16_grad_error", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/fp16-grad-error.jsonl")
    args = ap.parse_args(argv)
    problem = output_problem("python -m bench.fp16_grad_error", files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for lengths, h, v, seed in PROBLEMS:
        res = measure(_problem(lengths, h, v, seed))
        rows.append(dict(lengths=lengths, h=h, v=v, seed=seed, **res, command="python -m bench.fp16_grad_error",
                         time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=platform.machine(),
                         load=os.getloadavg(), torch_version=torch.__version__))
        print(json.dumps(rows[-1]))
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
