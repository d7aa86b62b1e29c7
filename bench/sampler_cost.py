"""Measure the constants of ``sampler: auto``'s cost model (:mod:`inpo.generation.cost`) for one model on this machine.

Run in the vLLM venv (``make test-vllm`` builds it) so that both samplers are timed, on a quiet machine::

    .venv-vllm/bin/python -m bench.sampler_cost --model default --write-constants
    .venv-vllm/bin/python -m bench.sampler_cost --model smollm2 --write-constants

``--model``: ``default`` (the embedded task's SFT'd policy), a real-model name (``smollm2``, via
``inpo.models``) or a local model folder. Over the public API only: the trainer's ``load_policy``, the samplers the
run uses (``HFSampler`` with ``--hf-batch`` rows per ``generate``, the run's ``gen_batch_size``; ``VLLMSampler``
with the run's engine settings), the embedded task's prompts (repeated for the long-prompt points), sampling at
temperature 1 with the responses' natural stops.

For each sampler: a grid of calls chosen to separate the cost terms (1 row: per-call and per-step cost; 64-128 rows:
per-token cost; long prompts with 2 new tokens: prefill cost), ``--reps`` interleaved repetitions each, median.
A least-squares fit (non-negative) of ``seconds = call + steps · step + tokens · per_token + prompt_tokens ·
per_prompt_token`` over the medians, where ``steps`` are decode steps (HF: per ``generate`` batch, up to the
longest response + its stop; vLLM: up to the call's longest) and ``tokens`` the rows × steps HF computes
(finished rows are padded along) or the tokens vLLM generates. The fit's terms become per layer (step) and
GFLOP/s (tokens) with the model's shape; vLLM's engine start (construction) and in-place weight update
(``set_policy``) are timed apart.

One JSON line per run goes to ``--out`` (bench/results/sampler-cost.jsonl) with the machine, load averages,
threads, the command, every point and the fit; ``--write-constants`` also stores the fit as this model's entry for
this device kind in ``inpo/generation/sampler_costs.json``, which the rule reads. ``--smoke``: a tiny grid, one
rep, nothing written unless ``--out`` / ``--write-constants`` are given explicitly (checks the script runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.lib.outputs import output_problem
from inpo.generation.cost import COSTS_FILE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "sampler-cost.jsonl"
# (prompts, samples per prompt, max_new_tokens, prompt repeats)
GRID = [(1, 1, 32, 1), (1, 1, 4, 1), (4, 1, 32, 1), (4, 4, 32, 1), (8, 8, 32, 1), (32, 4, 8, 1), (16, 8, 16, 1),
        (4, 2, 2, 12), (8, 2, 2, 12)]
SMOKE_GRID = [(1, 1, 4, 1), (2, 2, 4, 1), (2, 1, 2, 3)]


def _policy(name: str, threads: int | None):
    from inpo.data.tokenizer import default_tokenizer, load_tokenizer
    from inpo.models import resolve_model
    from inpo.train.model import load_policy

    if name == "default":
        tok = default_tokenizer()
        model = load_policy(None, tokenizer=tok)
    else:
        path = str(resolve_model(name))
        tok = load_tokenizer(path)
        model = load_policy(path, tokenizer=tok)
    torch.set_num_threads(threads or (1 if name == "default" else torch.get_num_threads()))  # the trainer's rule
    return model.eval(), tok


def _prompts(n: int, repeat: int) -> list[str]:
    from inpo.data.prompts import default_prompts

    return [" ".join([p] * repeat) for p in default_prompts("eval", n=n, seed=0)]


def _point_terms(sampler: str, lengths: list[int], max_new: int, rows_per_batch: int) -> tuple[int, int]:
    """(decode steps, computed tokens) of one call from its response lengths (stop token not counted in them)."""
    def steps_of(chunk):
        return min(max_new, max(chunk) + 1) if chunk else 0

    if sampler == "hf":
        chunks = [lengths[i:i + rows_per_batch] for i in range(0, len(lengths), rows_per_batch)]
        return sum(steps_of(c) for c in chunks), sum(len(c) * steps_of(c) for c in chunks)
    return steps_of(lengths), sum(min(max_new, n + 1) for n in lengths)


def _measure(samplers: dict, grid, reps: int, hf_batch: int) -> dict:
    from inpo.data.chat import encode_prompt

    points = {name: [] for name in samplers}
    for prompts_n, k, max_new, repeat in grid:
        prompts = _prompts(prompts_n, repeat)
        times = {name: [] for name in samplers}
        terms = {}
        for rep in range(reps):
            for name, s in samplers.items():  # interleaved
                s.max_new_tokens = max_new
                t0 = time.perf_counter()
                s.sample(prompts, k, seed=1000 + rep)
                times[name].append(time.perf_counter() - t0)
                terms[name] = _point_terms(name, s.last_lengths, max_new, hf_batch)
        prompt_tokens = sum(len(encode_prompt(next(iter(samplers.values())).tokenizer, p)) for p in prompts) * k
        for name in samplers:
            steps, tokens = terms[name]
            points[name].append({"prompts": prompts_n, "k": k, "max_new_tokens": max_new, "prompt_repeat": repeat,
                                 "rows": prompts_n * k, "steps": steps, "tokens": tokens,
                                 "prompt_tokens": prompt_tokens, "median_s": statistics.median(times[name]),
                                 "samples_s": [round(t, 4) for t in times[name]]})
    return points


def _fit(points: list[dict]) -> dict:
    """Non-negative least squares of median_s on [1, steps, tokens, prompt_tokens], in relative error (each point
    weighted by 1 / its time, so the short calls count as much as the long ones); active set: drop a negative
    coefficient's column and refit."""
    cols = ["call_s", "step_s", "token_s", "prompt_token_s"]
    a = torch.tensor([[1.0, p["steps"], p["tokens"], p["prompt_tokens"]] for p in points], dtype=torch.float64)
    y = torch.tensor([p["median_s"] for p in points], dtype=torch.float64)
    w = 1.0 / y.clamp_min(1e-6)
    active = list(range(len(cols)))
    while True:
        coef = torch.linalg.lstsq(a[:, active] * w[:, None], (y * w).unsqueeze(1)).solution.squeeze(1)
        if (coef >= 0).all() or len(active) == 1:
            break
        active.pop(int(torch.argmin(coef)))
    out = {c: 0.0 for c in cols}
    for i, c in zip(active, coef.tolist()):
        out[cols[i]] = max(c, 0.0)
    pred = a[:, active] @ coef
    out["max_rel_residual"] = float(((pred - y).abs() / y).max())
    return out


def _constants(fit: dict, shape) -> dict:
    """The fit as the cost model's terms for this shape (per layer, GFLOP/s); a zero term becomes free/instant."""
    f = shape.flops_per_token
    rate = (lambda s: f / s / 1e9 if s > 0 else 1e9)
    return {"call_s": fit["call_s"], "step_s_per_layer": fit["step_s"] / shape.layers,
            "decode_gflops": rate(fit["token_s"]), "prefill_gflops": rate(fit["prompt_token_s"])}


def _time_vllm_lifetime(model, tok, hf_batch: int, updates: int) -> tuple:
    import copy

    from inpo.generation.vllm import VLLMSampler

    t0 = time.perf_counter()
    s = VLLMSampler(model, tok, max_new_tokens=32, batch_size=hf_batch)
    start_s = time.perf_counter() - t0
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    times = []
    for i in range(updates):
        t0 = time.perf_counter()
        s.set_policy(other if i % 2 == 0 else model)
        times.append(time.perf_counter() - t0)
    return s, start_s, statistics.median(times) if times else 0.0


def write_constants(path: Path, kind: str, entry: dict) -> None:
    """Insert or replace ``entry`` (by model name) among ``kind``'s measured models in the constants file."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    models = [m for m in data.get(kind, {}).get("models", []) if m["name"] != entry["name"]] + [entry]
    data[kind] = {"models": sorted(models, key=lambda m: m["shape"]["params"])}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _start(args, model, tok) -> tuple[dict, dict]:
    """The samplers to time and their start / update costs (HF: the policy is in memory, set_policy swaps a
    reference)."""
    from inpo._optional import available
    from inpo.generation import HFSampler

    if "vllm" in args.samplers and not available("vllm"):
        raise SystemExit("bench.sampler_cost: vllm is not importable here; run it with .venv-vllm/bin/python "
                         "(make test-vllm builds that venv), or pass --samplers hf")
    samplers, lifetime = {}, {}
    if "hf" in args.samplers:
        samplers["hf"] = HFSampler(model, tok, max_new_tokens=32, batch_size=args.hf_batch)
        lifetime["hf"] = {"start_s": 0.0, "update_s": 0.0}
    if "vllm" in args.samplers:
        s, start_s, update_s = _time_vllm_lifetime(model, tok, args.hf_batch, args.updates)
        samplers["vllm"], lifetime["vllm"] = s, {"start_s": start_s, "update_s": update_s}
    for s in samplers.values():  # warm-up: first-call costs are not per-call costs
        s.max_new_tokens = 4
        s.sample(_prompts(2, 1), 1, seed=0)
    return samplers, lifetime


def _store(args, rec: dict, shape, fits: dict, lifetime: dict) -> None:
    if set(fits) != {"hf", "vllm"}:
        raise SystemExit("bench.sampler_cost: --write-constants needs both samplers measured")
    entry = {"name": args.model, "shape": shape.__dict__,
             "source": {"date": rec.get("date"), "commit": rec.get("commit"), "loadavg_1m": rec["loadavg_1m"],
                        "threads": rec["threads"], "command": rec["command"], "smoke": args.smoke}}
    for name in fits:
        entry[name] = {**_constants(fits[name], shape), **lifetime[name]}
    write_constants(Path(args.constants) if args.constants else COSTS_FILE, rec["device_kind"], entry)
    print(f"[sampler-cost] constants for {args.model} on {rec['device_kind']} written to {args.constants or COSTS_FILE}")


def run(args, argv: list[str]) -> dict:
    from inpo.generation.cost import model_shape
    from inpo.utils.record import environment_info

    model, tok = _policy(args.model, args.threads)
    shape = model_shape(model)
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    load = [os.getloadavg()[0]]
    samplers, lifetime = _start(args, model, tok)
    points = _measure(samplers, SMOKE_GRID if args.smoke else GRID, args.reps, args.hf_batch)
    load.append(os.getloadavg()[0])
    t0 = time.perf_counter()
    if "vllm" in samplers:
        samplers["vllm"].close()
    close_s = time.perf_counter() - t0
    fits = {name: _fit(p) for name, p in points.items()}
    rec = {**environment_info(kind), "bench": "sampler-cost", "model": args.model, "device_kind": kind,
           "shape": shape.__dict__, "threads": torch.get_num_threads(), "hf_batch": args.hf_batch, "reps": args.reps,
           "smoke": args.smoke, "loadavg_1m": [round(x, 2) for x in load], "points": points, "fit": fits,
           "lifetime": lifetime, "vllm_close_s": close_s if "vllm" in samplers else None,
           "vllm_cpu_omp_threads_bind": getattr(samplers.get("vllm"), "cpu_omp_binding", None),
           "command": "python -m bench.sampler_cost " + shlex.join(argv)}
    for name, fit in fits.items():
        print(f"[sampler-cost] {args.model} {name}: call {fit['call_s']:.3f} s, step {fit['step_s'] * 1e3:.2f} ms, "
              f"token {fit['token_s'] * 1e3:.3f} ms, prompt token {fit['prompt_token_s'] * 1e3:.4f} ms "
              f"(max residual {fit['max_rel_residual']:.0%}); {lifetime[name]}")
    if args.write_constants:
        _store(args, rec, shape, fits, lifetime)
    return rec


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.sampler_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="default | a real-model name (smollm2) | a model folder")
    ap.add_argument("--samplers", default="hf,vllm", help="comma list from hf,vllm")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hf-batch", type=int, default=128, help="rows per HF generate (the run's gen_batch_size)")
    ap.add_argument("--updates", type=int, default=5, help="timed vLLM weight updates")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the trainer's choice)")
    ap.add_argument("--out", default=None, help=f"JSONL to append to (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                "with --smoke: none)")
    ap.add_argument("--write-constants", action="store_true", help="store the fit in inpo/generation/sampler_costs.json")
    ap.add_argument("--constants", default=None, help="constants file to write instead (tests)")
    ap.add_argument("--smoke", action="store_true", help="tiny grid, 1 rep: checks the script runs")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    problems = [f"--samplers must be a comma list from hf,vllm, got {','.join(args.samplers)!r}"
                for _ in [0] if not args.samplers or set(args.samplers) - {"hf", "vllm"}]
    problems += [f"--{n.replace('_', '-')} must be >= 1, got {getattr(args, n)}" for n in ("reps", "hf_batch")
                 if getattr(args, n) < 1]
    if problems:
        print("bench.sampler_cost: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.smoke:
        args.reps = 1
    out = args.out or (None if args.smoke else str(DEFAULT_OUT))
    constants = args.constants or (str(COSTS_FILE) if args.write_constants else None)
    problem = output_problem("bench.sampler_cost", files={"--out": out, "--constants": constants})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    rec = run(args, argv)
    if out is not None:
        from inpo.utils.record import append_jsonl

        append_jsonl(out, rec)
        print(f"[sampler-cost] appended a record to {out}")
    return 0 if all(math.isfinite(f["call_s"]) for f in rec["fit"].values()) else 1


if __name__ == "__main__":  # vLLM spawns its engine and worker processes: they re-import the main module
    raise SystemExit(main())
