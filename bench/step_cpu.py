"""Side-by-side training step on this CPU: ours vs TRL ``DPOTrainer`` (IPO, precomputed reference log-probs) vs our
step with the naive head, interleaved, with peak memory of each in a fresh process.

Model ``cpu-22m`` (a 21.6 M-parameter Llama shape with a 32k vocabulary, ``bench.lib.shapes.MODEL_SHAPES``), pairs of
**variable** length up to ``--seq-len`` (512) tokens (``bench.step.make_variable_pairs``: shared prompt, two
responses of independent lengths, each ending with eos). All systems train on the same pairs with IPO (β = 0.1),
fp32, AdamW, gradient clipping 1.0, ``--pairs`` pairs per optimiser step in ``--accum`` micro-batches:

* ``inpo``: ``inpo.train.step.train_step`` on packed micro-batches (fused head, ``impl=auto``: the native C++ head
  where built), packed-row attention as the trainer uses it on CPU;
* ``inpo-naive-head``: the same step with the naive head (full [N, V] logits);
* ``trl``: ``DPOTrainer`` with ``loss_type="ipo"``, ``precompute_ref_log_probs=True`` (TRL >= 1.x scores tokens with
  its own chunked LM head), padded batches of ``pairs/accum`` pairs (TRL 1.16 disables ``padding_free``),
  ``gradient_checkpointing=False`` like ours. Each timed TRL step is one ``trainer.train()`` call of one optimiser
  step over exactly the same pairs; its time is read by a callback from step begin to step end (TRL's data
  loading/collation before the step is not charged to it).

Timing: one warm-up step each, then ``--reps`` rounds running every system once in turn (A, B, C, A, B, C, ...),
so load from other processes hits all alike; the median and a bootstrap 90% interval of the median are recorded,
with ``os.getloadavg()`` and the thread count. tokens/s counts real (unpadded) tokens of the step's pairs.

Peak memory (``peak_mem_bytes``): in a fresh subprocess per system, after imports and data building,
``VmHWM - VmRSS`` over building the model + optimiser and two steps (weights, gradients, Adam states and
activations: what a user's process needs beyond the libraries); ``step_mem_bytes`` is the same window over the
second step alone (activations and temporaries, Adam states already allocated).

Records append to ``bench/results/step-cpu.jsonl`` (``kind="cpu-compare"``) and are judged by ``python -m bench.report``
(target: ours ≥ 1.5× TRL's tokens/s at ≤ ½ its peak memory).

    python -m bench.step_cpu                       # the full CPU comparison (a few minutes under load)
    python -m bench.step_cpu --smoke --out /tmp/x.jsonl   # tiny model, seconds (tests)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.lib.memory import reset_peak_rss, status_kb
from bench.lib.outputs import output_problem
from bench.lib.shapes import MODEL_SHAPES
from bench.step import StepBenchConfig, prepare, skip_reason
from inpo.utils.record import append_jsonl, environment_info

SYSTEMS = ("inpo", "inpo-naive-head", "trl")
REPO_ROOT = Path(__file__).resolve().parents[1]  # `python -m bench.step_cpu` runs from here
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "step-cpu.jsonl"
TARGET_SPEEDUP_VS_TRL = 1.5
TARGET_MEM_VS_TRL = 0.5


def bootstrap_median_ci(samples: list[float], *, level: float = 0.9, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``samples`` (``level`` coverage)."""
    if not samples:
        raise ValueError("samples must hold at least one value, got an empty list")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(samples, k=len(samples))) for _ in range(n_boot))
    lo = meds[int((1 - level) / 2 * (n_boot - 1))]
    hi = meds[int((1 + level) / 2 * (n_boot - 1))]
    return lo, hi


def _step_config(args) -> StepBenchConfig:
    pairs_per_micro = args.pairs // args.accum
    cfg = StepBenchConfig(model=args.model, seq_len=args.seq_len, micro_batch_tokens=2 * args.seq_len * pairs_per_micro,
                          accum=args.accum, systems=tuple(args.systems), warmup=1, reps=args.reps, sweep=False,
                          objective="ipo", impl=args.impl, lr=1e-5, device="cpu", seed=args.seed, smoke=args.smoke,
                          lengths="variable", extra={"trl_steps_per_train": 1})
    cfg.validate()
    return cfg


def _prepare(system: str, cfg):
    return prepare(system, cfg, torch.device("cpu"), cfg.micro_batch_tokens)


def _one_step_ms(system: str, prepared) -> float:
    """Wall time of one optimiser step (TRL: its callback's step time of one ``train()`` call)."""
    if system == "trl":
        times = prepared.step()
        if len(times) != 1:
            raise RuntimeError(f"TRL ran {len(times)} steps in one train() call, expected 1")
        return times[0]
    t0 = time.perf_counter()
    prepared.step()
    return (time.perf_counter() - t0) * 1e3


# ---- memory in a fresh process -------------------------------------------------------------------------------

def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back so RSS windows start honest
    except (OSError, AttributeError):
        pass


def _mem_probe(system: str, cfg) -> dict:
    import transformers  # noqa: F401 -- libraries loaded before the window opens
    if system == "trl":
        import datasets  # noqa: F401
        import trl  # noqa: F401
    _malloc_trim()
    before = status_kb("VmRSS")
    if before is None or not reset_peak_rss():
        return {"peak_mem_bytes": None, "step_mem_bytes": None}
    p = _prepare(system, cfg)
    _one_step_ms(system, p)
    _malloc_trim()
    before_step = status_kb("VmRSS")
    high_so_far = status_kb("VmHWM")
    reset_peak_rss()
    _one_step_ms(system, p)
    step_peak = status_kb("VmHWM")
    total = max(high_so_far, step_peak) - before
    return {"peak_mem_bytes": total * 1024, "step_mem_bytes": max(0, step_peak - before_step) * 1024}


def mem_subprocess(system: str, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.step_cpu", *argv, "--mem-probe", system]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO_ROOT)
    if res.returncode != 0:
        print(f"[step-cpu] memory probe for {system} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
        return {"peak_mem_bytes": None, "step_mem_bytes": None}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- the run -------------------------------------------------------------------------------------------------

def run(args, argv: list[str]) -> list[dict]:
    torch.set_num_threads(args.threads)
    cfg = _step_config(args)
    systems = []
    for s in cfg.systems:
        why = skip_reason(s, torch.device("cpu"))
        if why:
            print(f"[step-cpu] {s}: {why}", file=sys.stderr)
        else:
            systems.append(s)
    env = environment_info("cpu")
    prepared = {s: _prepare(s, cfg) for s in systems}
    tokens = {s: p.tokens_per_step for s, p in prepared.items()}
    for s in systems:  # warm-up: allocator growth, Adam state, TRL's reference precompute
        _one_step_ms(s, prepared[s])
    samples: dict[str, list[float]] = {s: [] for s in systems}
    load = [os.getloadavg()[0]]
    for _ in range(args.reps):
        for s in systems:
            samples[s].append(_one_step_ms(s, prepared[s]))
        load.append(os.getloadavg()[0])
    infos = {s: prepared[s].info for s in systems}
    for p in prepared.values():
        p.cleanup()
    prepared.clear()
    mem = {s: (mem_subprocess(s, argv) if args.mem else {"peak_mem_bytes": None, "step_mem_bytes": None})
           for s in systems}
    cmd = "python -m bench.step_cpu " + " ".join(shlex.quote(a) for a in argv)
    records = []
    for s in systems:
        med = statistics.median(samples[s])
        lo, hi = bootstrap_median_ci(samples[s])
        rec = {**env, "bench": "step-cpu", "kind": "cpu-compare", "system": s, "model": cfg.model,
               "seq_len": cfg.seq_len, "lengths": "variable", "objective": "ipo", "pairs_per_step": args.pairs,
               "accum": args.accum, "tokens_per_step": tokens[s], "step_median_ms": med, "step_ci90_ms": [lo, hi],
               "samples_ms": [round(x, 2) for x in samples[s]], "tokens_per_s": tokens[s] / (med / 1e3),
               "tokens_per_s_ci90": [tokens[s] / (hi / 1e3), tokens[s] / (lo / 1e3)], "reps": args.reps,
               "torch_threads": args.threads, "loadavg_1m": [round(x, 2) for x in load], "smoke": args.smoke,
               "precision": "fp32", "command": cmd, "interleaved": True, **mem[s], **infos[s]}
        records.append(rec)
    by = {r["system"]: r for r in records}
    if "trl" in by:
        for r in records:
            r["speedup_vs_trl"] = r["tokens_per_s"] / by["trl"]["tokens_per_s"]
            if r.get("peak_mem_bytes") and by["trl"].get("peak_mem_bytes"):
                r["mem_vs_trl"] = r["peak_mem_bytes"] / by["trl"]["peak_mem_bytes"]
    for r in records:
        print(_fmt(r))
    return records


def _fmt(r: dict) -> str:
    mem = "n/a" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**20:.0f} MiB"
    extra = "".join(f"  {k}={r[k]:.2f}" for k in ("speedup_vs_trl", "mem_vs_trl") if r.get(k) is not None)
    return (f"[step-cpu] {r['system']:<16} {r['step_median_ms']:9.1f} ms/step (90% CI {r['step_ci90_ms'][0]:.1f}–"
            f"{r['step_ci90_ms'][1]:.1f})  {r['tokens_per_s']:8.1f} tok/s  peak {mem}{extra}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.step_cpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cpu-22m", help="a bench.lib.shapes.MODEL_SHAPES key (default cpu-22m)")
    ap.add_argument("--seq-len", type=int, default=512, help="max tokens per sequence (default 512)")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per optimiser step (default 4)")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per optimiser step (default 2)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved timed rounds (default 5)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {SYSTEMS}")
    ap.add_argument("--impl", default="auto", choices=["auto", "native", "torch", "triton"],
                    help="our fused head's impl (default auto: native where built)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mem", dest="mem", action="store_false", help="skip the fresh-process memory probes")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64-token pairs, 2 rounds (tests)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSONL to append to (default {DEFAULT_OUT})")
    ap.add_argument("--mem-probe", default=None, help=argparse.SUPPRESS)  # internal: one fresh-process probe
    return ap


def _check(args) -> None:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        raise ValueError(f"--systems must be a comma list from {SYSTEMS}, got {args.systems!r}")
    args.systems = systems
    if args.model not in MODEL_SHAPES:
        raise ValueError(f"--model must be one of {sorted(MODEL_SHAPES)}, got {args.model!r}")
    if args.pairs < 1 or args.accum < 1 or args.pairs % args.accum:
        raise ValueError(f"--pairs must be a positive multiple of --accum, got --pairs {args.pairs} --accum "
                         f"{args.accum}")
    if args.reps < 1 or args.threads < 1:
        raise ValueError(f"--reps and --threads must be >= 1, got {args.reps} and {args.threads}")
    if args.seq_len < 64:
        raise ValueError(f"--seq-len must be >= 64 tokens (variable-length pairs), got {args.seq_len}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.smoke:
        if "--model" not in argv:
            args.model = "tiny"
        if "--seq-len" not in argv:
            args.seq_len = 64
        if "--reps" not in argv:
            args.reps = 2
    try:
        _check(args)
    except ValueError as exc:
        print(f"python -m bench.step_cpu: {exc}", file=sys.stderr)
        return 2
    problem = None if args.mem_probe else output_problem("python -m bench.step_cpu", files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.mem_probe:
        torch.set_num_threads(args.threads)
        print(json.dumps(_mem_probe(args.mem_probe, _step_config(args))))
        return 0
    probe_argv = [a for a in argv if a != "--mem-probe"]
    records = run(args, probe_argv)
    append_jsonl(args.out, records)
    print(f"[step-cpu] appended {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
