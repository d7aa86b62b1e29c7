"""Nash-level evidence on the language model, round 2: matched steps, 15 iterations, exact pooled exploitability.

The question: does INPO's last iterate end less exploitable than the baselines' when every method moves the policy
by the same amount per iteration and runs long enough to show cycling? Protocol (issue 20; fixed before the final
runs, and printed at the top of summary.md):

* **Settings.** ``style`` (primary): the synthetic oracle at α = 0 — rock-paper-scissors over the styles the tiny
  model writes, an unstyled response losing to a styled one — whose Nash policy (the uniform mix of the three styles)
  is known and reachable. ``cyclic`` (secondary): quality and style (α = 8, β = 2, γ = 1, m = 0.25), scored on its
  style part.
* **Arms.** INPO with τ/η = 1/3 (the paper's), τ/η = 0.1 and τ = 0; INPO with random pairs (one comparison of two
  samples per prompt: the pair population of the paper's Lemma 5); ONPO; iterative DPO; IPO. Every tournament arm
  spends the same oracle queries (K = 8 samples, a best/worst tournament: 11 per prompt); the random-pair arm spends
  one per prompt (equal queries would mean 11 pairs per prompt, 11× the training compute of every other arm).
* **Matched steps.** On a calibration seed, one iteration per value of a 5-value log grid (factor 4) per method; for
  each method the value whose first iteration moves the pooled style mix by KL(π_1 ‖ π_0) closest to 0.2 (large
  step) and to 0.03 (small step); a pick on the grid's edge widens the grid on that side and runs again, unless the
  KL has stopped moving there (the optimiser, not the parameter, limits the step: the pick is flagged saturated); a
  pick more than 1.5× off its target gets the grid's geometric midpoint toward it (at most twice). INPO's
  three τ/η arms and IPO share one calibration: from π_0 = π_ref their first iteration is the same regression.
* **Runs.** T = 15 iterations of 128 training prompts (a fresh subset of the 326 each iteration), every iterate
  evaluated on the 109 held-out test prompts with eval_k = 16 samples; 4 seeds at the large step and 2 at the small
  one (style, all arms), 2 at the large step (cyclic: INPO, INPO τ = 0, ONPO, DPO, IPO). A seed fixes π_ref's SFT
  seed, the prompt split and the evaluation samples, so arms are paired by seed.
* **Endpoints.** Primary: the pooled style exploitability (exact over the style classes, cross-fitted over prompt
  folds; :mod:`inpo.exploitability`) of the last iterate (t = 15) at the large step, each arm minus INPO (τ/η = 1/3),
  paired by seed, with a two-level bootstrap interval (seeds, then prompts). Secondary: the worst iterate over
  t ∈ [8, 15], the average iterate (t = 1..15), the per-prompt cross-fit estimate with the plug-in upper bracket,
  the small step, and ``cyclic``.
* **Predictions.** Beside each LM curve, the style bandit (:func:`inpo.games.style_game`) run in closed form from
  the run's π_ref style mix at the step the LM realised (:func:`inpo.games.realised_step` on its first-iteration KL),
  and for INPO / IPO the regularised Nash policy at the realised τ (their predicted fixed point).

Resumable: each run is cached as JSON under ``--cache`` (an interrupted run resumes from its own checkpoints), so the
same command continues where it stopped; ``--summary-only`` rewrites the report from what is cached.

    python -m bench.experiment_nash --out bench/results/nash-lm-v2 [--workers 1]
    python -m bench.experiment_nash --quick --out /tmp/nash   # the code path in about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from bench.experiment_nash_report import write_report
from bench.nash_protocol import (ARMS, BASE, CALIBRATION_SEED, GRID_FACTOR, GROUPS, LEVELS, MAX_WIDEN, OFF_TARGET,
                                 PRIMARY, QUICK, QUICK_SEEDS, REFERENCE_ARM, SATURATED, SEEDS, SETTING_ARMS, SETTINGS,
                                 SHAPES, SPLIT, Job, first_kl, grid, oracle_spec, protocol_id)
from inpo.data.prompts import default_prompts
from inpo.data.tokenizer import default_tokenizer
from inpo.online import run_training
from inpo.train.config import load_config
from inpo.train.model import build_default_policy, export_policy

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["ARMS", "BASE", "CALIBRATION_SEED", "GRID_FACTOR", "GROUPS", "LEVELS", "MAX_WIDEN", "PRIMARY", "QUICK",
           "OFF_TARGET", "QUICK_SEEDS", "REFERENCE_ARM", "SATURATED", "SEEDS", "SETTING_ARMS", "SETTINGS", "SHAPES", "SPLIT", "Job",
           "grid", "oracle_spec", "protocol_id", "Runner", "calibrate", "calibration_plan", "main", "one_run", "pick",
           "run_all", "run_config", "saturated"]

def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def split_prompts(seed: int, cache: Path) -> dict[str, Path]:
    """Seeded train/validation/test split of the embedded task's prompts, written as .txt files."""
    pool = default_prompts("train") + default_prompts("eval")
    order = list(range(len(pool)))
    random.Random(10_007 * seed + 1).shuffle(order)
    n_tr, n_va = int(SPLIT[0] * len(pool)), int(SPLIT[1] * len(pool))
    parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
    out = {}
    for name, idx in parts.items():
        path = cache / "splits" / f"seed{seed}" / f"{name}.txt"
        if not path.is_file():
            _atomic_write(path, "".join(pool[i] + "\n" for i in sorted(idx)))
        out[name] = path
    return out


def policy_dir(shape: str, seed: int, cache: Path) -> Path:
    """π_ref of ``seed`` at a larger ``shape``: built once (SFT warm start on the default task, on CPU) and exported
    as a model folder the runs load with ``model=DIR``."""
    path = cache / "policies" / f"{shape}-seed{seed}"
    if not (path / "config.json").is_file():
        tok = default_tokenizer()
        model = build_default_policy(tok, seed=seed, shape=SHAPES[shape]["shape"], sft=SHAPES[shape].get("sft"),
                                     cache_dir=cache / "policy-build")
        tmp = export_policy(model, tok, path.with_name(path.name + ".tmp"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    return path


def run_config(job: Job, cache: Path, quick: bool, shape: str = "tiny") -> dict:
    arm = ARMS[job.arm]
    splits = split_prompts(job.seed, cache)
    cfg = {**BASE, **(QUICK if quick else {}), **arm["config"], arm["param"]: job.value,
           "oracle": oracle_spec(job.setting), "seed": job.seed, "sft_seed": 0 if quick else job.seed,
           "prompts": str(splits["train"]), "eval_prompts": str(splits["val" if job.stage == "calibrate" else "test"]),
           "eval_seed": 1000 + job.seed, "threads": 1, "progress": False}
    if shape != "tiny":  # a user-model run: every default the embedded task would fill is set explicitly
        cfg.update(model=str(policy_dir(shape, job.seed, cache)), sampler="hf", threads=None, **SHAPES[shape]["train"])
        cfg.setdefault("max_new_tokens", 24)
        cfg.pop("sft_seed")
    if job.stage == "calibrate":
        cfg["iterations"] = 1
    return cfg


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _train(overrides: dict, out: Path) -> list[dict]:
    """One online run in ``out``, resumed from its own checkpoints when an earlier attempt was interrupted; a run
    directory that cannot be resumed (it died before its first checkpoint) is our cache's and starts afresh."""
    if out.exists():
        try:
            return run_training(load_config(None, {**overrides, "output": str(out), "resume": True}))
        except Exception as exc:  # noqa: BLE001 - any failure to resume means: start this run again from scratch
            print(f"[nash] {out.name}: could not resume ({type(exc).__name__}: {exc}); starting it again", flush=True)
            shutil.rmtree(out)
    return run_training(load_config(None, {**overrides, "output": str(out)}))


def one_run(job: Job, overrides: dict, run_dir: str) -> dict:
    """Train one job and return its per-iteration records and the evaluation samples of every iterate."""
    out = Path(run_dir)
    t0, cpu0, load0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), os.getloadavg()[0]
    records = _train(overrides, out)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ref = _read_jsonl(out / "eval_ref_responses.jsonl")
    samples = {0: [r["responses"] for r in ref]}
    for r in records:
        t = int(r["iteration"])
        samples[t + 1] = [x["responses"] for x in _read_jsonl(out / f"iter_{t:03d}" / "eval_responses.jsonl")]
    keep = ("iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "oracle_queries", "pairs", "ties_dropped",
            "wall_s")
    return {**{k: v for k, v in job.__dict__.items() if k != "level"}, "config": overrides, "objective": repr(load_config(None, overrides).make_objective()),
            "wall_s": time.perf_counter() - t0, "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "load": [load0, os.getloadavg()[0]], "prompts": [r["prompt"] for r in ref], "samples": samples,
            "iterations": [{k: r.get(k) for k in keep} for r in records]}


def result_path(cache: Path, job: Job) -> Path:
    return cache / "results" / f"{job.key}.json"


@dataclass
class Runner:
    """How runs are made: the cache, parallel workers, the size tier, π_ref's shape and a deadline (monotonic
    seconds) after which no new run starts (the GPU recipe's 10-minute calls)."""

    cache: Path
    workers: int = 1
    quick: bool = False
    shape: str = "tiny"
    deadline: float | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _finish(cache: Path, job: Job, fut) -> None:
    try:
        res = fut.result()
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        print(f"[nash] {job.key} failed: {exc!r}", file=sys.stderr, flush=True)
        return
    _atomic_write(result_path(cache, job), json.dumps(res))
    shutil.rmtree(cache / "work" / job.key.replace("/", "-"), ignore_errors=True)
    print(f"[nash] {job.key}: {len(res['iterations'])} iterations, {res['cpu_s']:.0f} s CPU ({res['wall_s']:.0f} s "
          f"wall)", flush=True)


def run_all(jobs: list[Job], runner: Runner) -> None:
    """Run the jobs whose result is not cached yet, at most ``workers`` at a time; each finished run is written at
    once (a kill loses only the runs in flight, and those resume from their checkpoints)."""
    cache = runner.cache
    todo = list({j.key: j for j in jobs if not result_path(cache, j).is_file()}.values())
    print(f"[nash] {len(todo)} of {len({j.key for j in jobs})} runs to do", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, runner.workers)) as pool:
        running: dict = {}
        while todo or running:
            while todo and len(running) < runner.workers and not runner.expired():
                j = todo.pop(0)
                cfg = run_config(j, cache, runner.quick, runner.shape)
                running[pool.submit(one_run, j, cfg, str(cache / "work" / j.key.replace("/", "-")))] = j
            if not running:
                print(f"[nash] deadline reached: {len(todo)} runs left for the next call", flush=True)
                return
            fut = next(as_completed(running))
            _finish(cache, running.pop(fut), fut)


def load_result(cache: Path, job: Job) -> dict | None:
    path = result_path(cache, job)
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------ calibration

def pick(kls: dict[float, float], target: float) -> float:
    """The grid value whose KL is closest to ``target`` on a log scale (ties: the smaller value)."""
    return min(kls, key=lambda v: (abs(math.log(max(kls[v], 1e-12) / target)), v))


def saturated(kls: dict[float, float], values: list[float], side: int) -> bool:
    """Whether the grid's edge on ``side`` (0: low, -1: high) moved the KL by less than SATURATED× from its neighbour:
    the first iteration is then limited by the optimiser (learning rate × steps), not by the parameter, and widening
    further cannot reach the target."""
    edge, inner = (values[0], values[1]) if side == 0 else (values[-1], values[-2])
    if edge not in kls or inner not in kls:
        return False
    return abs(math.log(max(kls[edge], 1e-12) / max(kls[inner], 1e-12))) < math.log(SATURATED)


def _refinement(have: dict[float, float], v: float, target: float) -> float | None:
    """The geometric midpoint between the pick ``v`` and its neighbour on the other side of ``target`` (the target's
    KL lies between theirs), when the pick is more than OFF_TARGET× off and the two are more than a factor 1.9 apart
    (so a factor-4 gap is halved at most twice); else None."""
    if abs(math.log(max(have[v], 1e-12) / target)) <= math.log(OFF_TARGET):
        return None
    order = sorted(have)
    i = order.index(v)
    for j in (i - 1, i + 1):
        if 0 <= j < len(order) and (have[order[j]] - target) * (have[v] - target) < 0 and \
                max(v, order[j]) / min(v, order[j]) > 1.9:
            return round(math.sqrt(v * order[j]), 10)
    return None


def calibration_plan(kls: dict[float, float], values: list[float], widen: tuple[int, int],
                     refined: tuple = ()) -> tuple[dict, tuple, set]:
    """Picks per level among ``values`` (the grid so far) and its ``refined`` midpoints from their measured KLs, the
    widening the next round needs (a pick on an edge of the grid widens it on that side by one value: at most
    MAX_WIDEN per side, and not past a saturated edge, where the edge pick stays and the report flags it), and the
    refinements it needs (a pick more than OFF_TARGET× off its target gets the midpoint toward it: the grid's factor
    4 in the parameter is up to 16 in KL where the KL moves as the square of the step)."""
    have = {v: kls[v] for v in sorted(set(values) | set(refined)) if v in kls}
    picks = {level: pick(have, target) for level, target in LEVELS.items()}
    low = any(v == values[0] for v in picks.values()) and widen[0] < MAX_WIDEN and not saturated(have, values, 0)
    high = any(v == values[-1] for v in picks.values()) and widen[1] < MAX_WIDEN and not saturated(have, values, -1)
    more = {m for lv, target in LEVELS.items() if (m := _refinement(have, picks[lv], target)) is not None}
    return picks, (widen[0] + low, widen[1] + high), more - set(have)


def _group_outcome(cache: Path, group: str, values: list[float], widen: tuple[int, int],
                   refined: set) -> tuple[dict, tuple, set]:
    """One group's calibration record (values run, KLs, picks, edge and saturation flags), its next widening and
    refinements."""
    arm = GROUPS[group][0]
    run = sorted(set(values) | refined)
    kls = {}
    for v in run:
        res = load_result(cache, Job("calibrate", PRIMARY, arm, CALIBRATION_SEED, v))
        if res is not None:
            kls[v] = first_kl(res, PRIMARY)
    picks, new, more = calibration_plan(kls, values, widen, tuple(refined))
    edge = {lv: v in (values[0], values[-1]) for lv, v in picks.items()}
    flat = {lv: edge[lv] and saturated(kls, values, 0 if v == values[0] else -1) for lv, v in picks.items()}
    return {"arm": arm, "param": ARMS[arm]["param"], "grid": run, "kl": {f"{v:g}": kls.get(v) for v in run},
            "picks": picks, "edge": edge, "saturated": flat}, new, more


def calibrate(runner: Runner, groups: list[str]) -> dict[str, dict] | None:
    """Per calibration group: the grid run, each value's first-iteration KL, the picks per level and edge flags.
    Written to ``<cache>/calibration.json`` (what ``--summary-only`` reads); None when the deadline cut it short."""
    widen = {g: (0, 0) for g in groups}
    refined: dict[str, set] = {g: set() for g in groups}
    half = 1 if runner.quick else 2
    while True:
        values = {g: grid(g, *widen[g], half=half) for g in groups}
        jobs = [Job("calibrate", PRIMARY, GROUPS[g][0], CALIBRATION_SEED, v) for g in groups
                for v in sorted(set(values[g]) | refined[g])]
        run_all(jobs, runner)
        if any(not result_path(runner.cache, j).is_file() for j in jobs):
            return None
        out, changed = {}, False
        for g in groups:
            out[g], new, more = _group_outcome(runner.cache, g, values[g], widen[g], refined[g])
            if not runner.quick and (new != widen[g] or more):
                widen[g], changed = new, True
                refined[g] |= more
        if not changed:
            _atomic_write(runner.cache / "calibration.json", json.dumps(out, indent=1))
            return out


# ----------------------------------------------------------------------------------------------------- main

def final_jobs(picks: dict[str, dict], arms: list[str], settings: list[str], seeds: dict) -> list[Job]:
    jobs = []
    for (setting, level), n in seeds.items():
        if setting not in settings:
            continue
        for seed in range(n):
            for arm in [a for a in arms if a in SETTING_ARMS.get(setting, ARMS)]:
                group = picks.get(ARMS[arm]["group"])
                if group is not None:
                    jobs.append(Job("final", setting, arm, seed, group["picks"][level], level))
    return jobs


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/nash-lm-v2")
    ap.add_argument("--cache", default=None, help="run cache (default <repo>/.cache/nash-lm-v2; OUT/.cache with --quick)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--levels", default=",".join(LEVELS), help="step levels of the final runs")
    ap.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per setting and level")
    ap.add_argument("--model-shape", default="tiny", choices=list(SHAPES), help="π_ref's shape (small: the GPU recipe)")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel (one thread each on CPU)")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no run after this many seconds (resume later)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 iterations, a 3-value grid (CI)")
    ap.add_argument("--summary-only", action="store_true", help="no new runs: report what the cache holds")
    ap.add_argument("--note", default="", help="a line added to summary.md (e.g. why results are partial)")
    args = ap.parse_args(argv)
    for name, valid in (("arms", ARMS), ("settings", SETTINGS), ("levels", LEVELS)):
        given = [x for x in getattr(args, name).split(",") if x]
        bad = [x for x in given if x not in valid]
        if bad or not given:
            ap.error(f"--{name}: unknown or empty {bad or given}; valid: {', '.join(valid)}")
        setattr(args, name, given)
    for name in ("workers", "max_seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if REFERENCE_ARM not in args.arms:
        ap.error(f"--arms must include {REFERENCE_ARM!r} (the arm every other is compared with)")
    return args


def _seeds(args) -> dict:
    seeds = QUICK_SEEDS if args.quick else SEEDS
    return {(s, lv): min(n, args.max_seeds or n) for (s, lv), n in seeds.items()
            if s in args.settings and lv in args.levels}


def _picks(args, runner: Runner, groups: list[str]) -> dict | int:
    """The calibration (run, or read from the cache with --summary-only), or the exit code when there is none."""
    path = runner.cache / "calibration.json"
    if args.summary_only:
        if not path.is_file():
            print(f"[nash] --summary-only: no calibration in {runner.cache} yet (run without it first)", file=sys.stderr)
            return 1
        return {g: v for g, v in json.loads(path.read_text()).items() if g in groups}
    if args.model_shape == "tiny":
        build_default_policy(default_tokenizer())  # π_ref of seed 0 (cached) before workers race to build it
    picks = calibrate(runner, groups)
    if picks is None:
        print("[nash] deadline reached during the calibration: run the same command again", flush=True)
        return 3
    return picks


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else (out / ".cache" if args.quick else ROOT / ".cache" / "nash-lm-v2")
    cache = cache / f"protocol-{protocol_id(args.quick, args.model_shape)}"
    if out.exists() and not out.is_dir():
        print(f"[nash] --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    groups = list(dict.fromkeys(ARMS[a]["group"] for a in args.arms))
    deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s
    runner = Runner(cache, args.workers, args.quick, args.model_shape, deadline)
    picks = _picks(args, runner, groups)
    if isinstance(picks, int):
        return picks
    jobs = final_jobs(picks, args.arms, args.settings, _seeds(args))
    if not args.summary_only:
        run_all(jobs, runner)
    results = [(j, r) for j in jobs if (r := load_result(cache, j)) is not None]
    if not results:
        print("[nash] no finished runs to report", file=sys.stderr)
        return 1
    calib = [load_result(cache, j) for j in calibration_jobs(picks)]
    text = write_report(out, picks, results, [r for r in calib if r], planned=len(jobs), note=args.note,
                        quick=args.quick, cache=cache)
    print(text)
    return 0


def calibration_jobs(picks: dict[str, dict]) -> list[Job]:
    return [Job("calibrate", PRIMARY, g["arm"], CALIBRATION_SEED, v) for g in picks.values() for v in g["grid"]]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
