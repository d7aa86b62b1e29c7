"""Compile the head kernels for a GPU architecture without a GPU (Triton's bundled ptxas and cuobjdump).

It catches what the interpreter cannot (lowering errors, shared-memory overflow, register spills) and
reports registers, spill bytes and shared memory per kernel, so configs can be vetted on a CPU machine:

    python -m inpo.kernels.compile_check                    # sm90 + sm80, bf16, baked configs
    python -m inpo.kernels.compile_check --arch 90 --dtype fp16 --bias --json

Argument specialisation mimics Triton's JIT for contiguous inputs: unit strides become constants, pointers
and the sizes/strides that are multiples of 16 get the divisibility hint (which enables cp.async pipelining).
It must run in a process where the kernels were not built under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_PTRS = {"Labels": "*i64", "PartM": "*fp32", "PartS": "*fp32", "PartT": "*fp32", "Lse": "*fp32", "Gtok": "*fp32",
         "DX": "*fp32", "DW": "*fp32", "DB": "*fp32", "Skipped": "*i32"}
_UNIT = ("stride_xh", "stride_wh")  # contiguous rows: the JIT turns ints equal to 1 into constants
_DIV16 = ("V", "Hd", "stride_xn", "stride_wv", "stride_dzn")
_FLOATS = ("grad_filter", "logit_scale", "softcap")


def _resources(cubin: bytes) -> dict:
    import triton

    exe = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([exe, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    finally:
        os.unlink(f.name)
    fields = next(line for line in out.splitlines() if "REG:" in line).split()
    kv = dict(item.split(":", 1) for item in fields if ":" in item)
    return {"registers": int(kv["REG"]), "spill_bytes": int(kv["STACK"])}


# Arguments of the preference epilogue (kernels/epilogue.py).
_PTRS.update({"CuSeqlens": "*i32", "Ref": "*fp32", "Anchor": "*fp32", "Targets": "*fp32", "Logps": "*fp32",
              "GroupLoss": "*fp32", "Loss": "*fp32", "Ticket": "*i32"})
_FLOATS += ("ref_coef", "anchor_coef", "offset", "target_center", "target_div", "scale", "smoothing")


def compile_kernel(fn, constexprs: dict, arch: int, dtype: str, num_warps: int, num_stages: int) -> dict:
    """Compile one kernel for ``sm_<arch>``; returns registers, spill (stack) bytes and shared memory bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("inpo.kernels.head was built under TRITON_INTERPRET=1; run compile_check in a fresh "
                           "process without it (python -m inpo.kernels.compile_check)")
    constexprs = dict(constexprs, **{k: 1 for k in _UNIT if k in fn.arg_names})
    ptrs = dict(_PTRS, X=f"*{dtype}", W=f"*{dtype}", B=f"*{dtype}", DZ=f"*{dtype}")
    sig = {}
    for name in fn.arg_names:
        sig[name] = "constexpr" if name in constexprs else ptrs.get(name) or ("fp32" if name in _FLOATS else "i32")
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if (name in ptrs or name in _DIV16) and sig[name] != "constexpr"}
    kernel = triton.compile(ASTSource(fn, sig, constexprs=constexprs, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    return {"shared_bytes": int(kernel.metadata.shared), **_resources(kernel.asm["cubin"])}


def report(arch: int, dtype: str = "bf16", bias: bool = False, softcap: bool = False) -> list[dict]:
    """Compile the forward, fused-backward (exact ``bwd`` and filtered ``bwdf``) and dz kernels with the baked
    config of ``arch``'s family (``softcap``: the variants with a model's tanh cap on the logits)."""
    from inpo.kernels import head
    from inpo.kernels.configs import baked, device_family

    fwd, bwd = baked(device_family((arch // 10, arch % 10)), fp32=dtype == "fp32", softcap=softcap)
    prec = "ieee" if dtype == "fp32" else "tf32"
    common = dict(DOT_FP32=False, DOT_PRECISION=prec, HAS_BIAS=bias, SOFTCAP=softcap)
    jobs = [
        ("fwd", head.head_fwd_kernel, fwd, dict(BLOCK_N=fwd.block_n, BLOCK_V=fwd.block_v, BLOCK_H=fwd.block_h)),
        # The default (exact) backward and the opt-in filtered one (grad_filter) are two specialisations.
        *((name, head.head_bwd_kernel, bwd, dict(COMPUTE_DX=True, COMPUTE_DW=True, COMPUTE_DB=bias, FILTER=filt,
                                                 COUNT_SKIPS=False, BLOCK_N=bwd.block_n, BLOCK_V=bwd.block_v,
                                                 BLOCK_H=bwd.block_h, GROUP_N=bwd.group_n))
          for name, filt in (("bwd", False), ("bwdf", True))),
        ("dz", head.head_dz_kernel, bwd, dict(COMPUTE_DB=bias, BLOCK_N=bwd.block_n, BLOCK_V=bwd.block_v,
                                              BLOCK_H=bwd.block_h, GROUP_N=bwd.group_n)),
    ]
    rows = []
    for name, fn, cfg, meta in jobs:
        res = compile_kernel(fn, {**common, **meta}, arch, dtype, cfg.num_warps, cfg.num_stages)
        rows.append(dict(kernel=name, arch=arch, dtype=dtype, bias=bias, softcap=softcap, block_n=cfg.block_n, block_v=cfg.block_v,
                         block_h=cfg.block_h, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **res))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inpo.kernels.compile_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append", help="SM version, e.g. 90 or 80 (repeatable; default both)")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--bias", action="store_true", help="compile the with-bias variants")
    ap.add_argument("--softcap", action="store_true", help="compile the variants with a logit softcap")
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the kernels must be built for the GPU)", file=sys.stderr)
        return 2
    rows = [r for arch in (args.arch or [90, 80]) for r in report(arch, args.dtype, args.bias, args.softcap)]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"sm{r['arch']} {r['kernel']:<4} {r['dtype']} BN={r['block_n']} BV={r['block_v']} BH={r['block_h']} "
                  f"warps={r['num_warps']} stages={r['num_stages']}: {r['registers']} regs, "
                  f"{r['spill_bytes']} B spilled, {r['shared_bytes'] // 1024} KiB shared")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
