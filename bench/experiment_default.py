"""INPO vs iterative DPO vs IPO vs SPPO (and INPO with τ = 0) on the embedded default task.

Every method runs the same ``inpo train`` defaults (3 iterations, same prompts per iteration, same K, same
oracle, same SFT'd π_ref) except for its objective; each (method, seed) is one run, whose per-iteration
win-rates vs π_ref (bootstrap 95% CI over held-out prompts) are appended to ``runs.jsonl`` as soon as it
ends -- an interrupted experiment keeps what finished and a re-run skips it. ``summary.md`` / ``summary.json``
give, per method and iteration, the mean win-rate over seeds with a 95% t-interval across seeds.

    python -m bench.experiment_default --out bench/results/experiments [--seeds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# method name -> config overrides (objective parameters not given here are the tuned defaults of inpo.train.config)
METHODS = {
    "inpo": {"objective": "inpo"},
    "inpo_tau0": {"objective": "inpo", "ratio": 0.0},
    "dpo_iterative": {"objective": "dpo"},
    "ipo": {"objective": "ipo"},
    "sppo": {"objective": "sppo"},
}

# t quantiles (two-sided 95%) for small numbers of seeds: df -> t
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _one(method: str, seed: int, overrides: dict, threads: int) -> dict:
    from inpo.online import run_training
    from inpo.train.config import load_config

    with tempfile.TemporaryDirectory(prefix=f"inpo-exp-{method}-{seed}-") as out:
        cfg = load_config(None, {**METHODS[method], **overrides, "seed": seed, "output": out, "progress": False,
                                 "threads": threads})
        t0 = time.perf_counter()
        records = run_training(cfg)
        wall = time.perf_counter() - t0
    return {"method": method, "seed": seed, "config": {**METHODS[method], **overrides}, "wall_s": wall,
            "objective": repr(cfg.make_objective()),
            "iterations": [{k: r.get(k) for k in ("iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high",
                                                   "pairs", "oracle_queries", "generate_s", "rank_s", "precompute_s",
                                                   "train_s", "eval_s", "wall_s")} for r in records]}


def _mean_ci(xs: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = _T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return m, m - h, m + h


def summarize(runs: list[dict], out: Path, note: str = "") -> str:
    from inpo.utils.record import environment_info

    by = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    n_iter = max((len(r["iterations"]) for r in runs), default=0)
    rows, table = [], []
    header = "| method | seeds | " + " | ".join(f"iter {t + 1} win-rate (95% CI)" for t in range(n_iter)) + \
        " | mean run wall s |"
    table += [header, "|" + "---|" * (n_iter + 3)]
    for method in METHODS:
        if method not in by:
            continue
        rs = by[method]
        cells = []
        for t in range(n_iter):
            xs = [r["iterations"][t]["win_rate"] for r in rs if len(r["iterations"]) > t]
            m, lo, hi = _mean_ci(xs)
            rows.append({"method": method, "iteration": t + 1, "seeds": len(xs), "win_rate_mean": m, "ci_low": lo,
                         "ci_high": hi, "per_seed": xs})
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        wall = sum(r["wall_s"] for r in rs) / len(rs)
        table.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    md = ["# INPO vs baselines on the embedded default task", "",
          "Win-rate of π_t against the starting policy π_ref under the synthetic intransitive oracle, on the",
          "held-out prompts (mean P(policy ≻ π_ref), 4 samples per held-out prompt). Cells: mean over seeds with a 95%",
          "t-interval across seeds; each run's own bootstrap CI over prompts is in runs.jsonl.",
          "`inpo_tau0` is the τ = 0 ablation (INPO without the KL anchor to π_ref, ratio τ/η = 0).", "",
          *table, ""]
    if note:
        md += [note, ""]
    env = environment_info()
    md += [f"Measured on {env['device']} (torch {env['torch']}, commit {env['commit']}, {env['date']}); the CPU was "
           f"shared with other jobs, so wall times are noisy.", ""]
    text = "\n".join(md)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "environment": env, "note": note}, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/experiments")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (e.g. --set iterations=2)")
    ap.add_argument("--note", default="", help="a line added to summary.md (e.g. why results are partial)")
    args = ap.parse_args(argv)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    done = [json.loads(x) for x in runs_path.read_text().splitlines()] if runs_path.is_file() else []
    have = {(r["method"], r["seed"]) for r in done}
    todo = [(m, s) for s in range(args.seeds) for m in methods if (m, s) not in have]
    print(f"[experiment] {len(todo)} runs to do ({len(have)} already in {runs_path})", flush=True)
    # Build the shared π_ref (SFT warm start, cached on disk) once before the workers race to it.
    from inpo.data.tokenizer import default_tokenizer
    from inpo.train.model import build_default_policy

    build_default_policy(default_tokenizer())
    from inpo.utils.record import append_jsonl, environment_info

    env = environment_info()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {pool.submit(_one, m, s, overrides, 1): (m, s) for m, s in todo}
        for fut in as_completed(futures):
            m, s = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # one failed run must not lose the others
                print(f"[experiment] {m} seed {s} failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            rec["environment"] = env
            append_jsonl(runs_path, rec)
            done.append(rec)
            wr = ", ".join(f"{it['win_rate']:.3f}" for it in rec["iterations"])
            print(f"[experiment] {m} seed {s}: win-rates {wr} ({rec['wall_s']:.0f} s)", flush=True)
            summarize(done, out, args.note)
    print(summarize(done, out, args.note))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
