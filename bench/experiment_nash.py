"""Nash-level evidence on the language model: exploitability of INPO, INPO τ=0, ONPO, iterative DPO, IPO and SPPO.

Win-rate against π_ref rewards exploiting π_ref, which Nash methods do not aim for. This experiment measures what
INPO claims to reduce: the exploitability 2·max_y′ E_{y∼π} P(y′ ≻ y) − 1 of each iterate (:mod:`inpo.exploitability`),
under the synthetic oracle at several intransitivity settings (:mod:`inpo.oracles.synthetic`'s knobs), including a
transitive one (β = 0) where every method should tie.

Protocol (one command, resumable: finished runs are cached and skipped on a re-run):

1. **Split.** Seed s shuffles the embedded task's 544 prompts into train / validation / test (60/20/20); seed s also
   sets π_ref (the SFT init and data order: ``sft_seed``), the run's sampling and the evaluation samples.
2. **Tune.** Each method's η / β is picked from a small grid (``GRID``) at the main setting on the *validation*
   prompts (``--tune-seeds`` seeds, distinct from the final ones), by mean final-iteration exploitability.
3. **Final.** Each method with its tuned value runs on every setting and seed; evaluation on the held-out *test*
   prompts. Budgets: INPO-family pairs cost 11 oracle queries per prompt (a K = 8 tournament); SPPO needs all
   K(K−1)/2 comparisons, so it runs at K = 5 (10 queries per prompt) for an equal budget.
4. **Report** (``--out``): ``runs.jsonl`` (one line per method × setting × seed × iteration; iteration 0 = π_ref),
   ``summary.md`` (tables with two-level bootstrap intervals over seeds and prompts; collapsed runs counted and
   reported by median, not averaged), ``tuning.jsonl`` and plots.

    python -m bench.experiment_nash --out bench/results/nash-lm [--seeds 10] [--side-seeds 5] [--workers 2]
    python -m bench.experiment_nash --quick --out /tmp/nash   # the code path in about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# method -> fixed config overrides; the tuned parameter comes from GRID
METHODS = {
    "inpo": {"objective": "inpo"},
    "inpo_tau0": {"objective": "inpo", "ratio": 0.0},
    "onpo": {"objective": "onpo"},
    "dpo_iterative": {"objective": "dpo"},
    "ipo": {"objective": "ipo"},
    "sppo": {"objective": "sppo", "k": 5},  # 5·4/2 = 10 queries per prompt vs the INPO tournament's 11
}
GRID = {
    "inpo": ("eta", [0.1, 0.25, 0.5]),
    "inpo_tau0": ("eta", [0.1, 0.25, 0.5]),
    "onpo": ("eta", [2.0, 4.0, 8.0]),
    "dpo_iterative": ("beta", [0.25, 0.5, 1.0]),
    "ipo": ("beta", [0.1, 0.25, 0.5]),
    "sppo": ("eta", [0.1, 0.25, 0.5]),
}
# name -> synthetic oracle options. "cyclic" is the main setting: style decides between responses whose quality
# differs by at most 0.25, the cycle can overturn gaps up to β/α beyond that, and an unstyled response loses to a
# styled one (no pure Nash escape). "style" drops quality (α = 0): a pure rock-paper-scissors game over the styles
# the tiny model can produce, whose unique Nash policy mixes the three styles uniformly (exploitability 0 is reachable).
# "default" is the embedded task's oracle; "transitive" has no cycle at all.
SETTINGS = {
    "cyclic": {"alpha": 8.0, "beta": 2.0, "none_penalty": 1.0, "quality_margin": 0.25},
    "style": {"alpha": 0.0, "beta": 2.0, "none_penalty": 1.0, "quality_margin": 0.0},
    "default": {"alpha": 8.0, "beta": 1.0, "none_penalty": 0.0, "quality_margin": 0.0},
    "transitive": {"alpha": 8.0, "beta": 0.0, "none_penalty": 0.0, "quality_margin": 0.0},
}
MAIN = "cyclic"
BASE = {"iterations": 3, "k": 8, "eval_k": 8, "epochs": 2, "max_new_tokens": 24, "n_bootstrap": 200}
QUICK = {"iterations": 1, "k": 4, "eval_k": 4, "epochs": 1, "max_new_tokens": 12, "n_bootstrap": 50,
         "n_prompts": 12, "n_eval": 6, "batch_pairs": 4}
SPLIT = (0.6, 0.2)  # train, validation; the rest is test
COLLAPSE_WIN_RATE = 0.3  # a run whose final iterate wins < 30 % against its own π_ref has collapsed


def oracle_spec(setting: str) -> str:
    return "synthetic:" + ",".join(f"{k}={v}" for k, v in SETTINGS[setting].items())


def split_prompts(seed: int, cache: Path) -> dict[str, Path]:
    """Seeded train/validation/test split of the embedded task's prompts, written as .txt files."""
    from inpo.data.prompts import default_prompts

    pool = default_prompts("train") + default_prompts("eval")
    order = list(range(len(pool)))
    random.Random(10_007 * seed + 1).shuffle(order)
    n_tr, n_va = int(SPLIT[0] * len(pool)), int(SPLIT[1] * len(pool))
    parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
    out = {}
    for name, idx in parts.items():
        path = cache / "splits" / f"seed{seed}" / f"{name}.txt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(pool[i] + "\n" for i in sorted(idx)))
            os.replace(tmp, path)
        out[name] = path
    return out


def run_config(method: str, setting: str, seed: int, value: float, eval_split: str, cache: Path,
               quick: bool) -> dict:
    param, _ = GRID[method]
    splits = split_prompts(seed, cache)
    return {**BASE, **(QUICK if quick else {}), **METHODS[method], param: value,
            "oracle": oracle_spec(setting), "seed": seed, "sft_seed": 0 if quick else seed,
            "prompts": str(splits["train"]), "eval_prompts": str(splits[eval_split]),
            "eval_seed": 1000 + seed, "threads": 1, "progress": False,
            **({"k": 4} if quick and method == "sppo" else {})}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def one_run(key: dict, overrides: dict, run_dir: str) -> dict:
    """Train one (method, setting, seed, value) and return its per-iteration records and eval samples."""
    from inpo.online import run_training
    from inpo.train.config import load_config

    out = Path(run_dir)
    if out.exists():  # a run killed half-way: our own cache directory, started again from scratch
        shutil.rmtree(out)
    cfg = load_config(None, {**overrides, "output": str(out)})
    t0 = time.perf_counter()
    records = run_training(cfg)
    wall = time.perf_counter() - t0
    ref = _read_jsonl(out / "eval_ref_responses.jsonl")
    samples = {0: [r["responses"] for r in ref]}
    for r in records:
        t = int(r["iteration"])
        samples[t + 1] = [x["responses"] for x in _read_jsonl(out / f"iter_{t:03d}" / "eval_responses.jsonl")]
    keep = ("iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "oracle_queries", "pairs",
            "exploitability", "exploitability_ci_low", "exploitability_ci_high", "style_exploitability")
    result = {**key, "config": overrides, "wall_s": wall, "objective": repr(cfg.make_objective()),
              "prompts": [r["prompt"] for r in ref], "samples": samples,
              "iterations": [{k: r.get(k) for k in keep} for r in records]}
    shutil.rmtree(out, ignore_errors=True)  # checkpoints and models are not needed once samples are kept
    return result


def _result_path(cache: Path, stage: str, setting: str, method: str, seed: int, value: float) -> Path:
    return cache / "results" / stage / setting / method / f"seed{seed}_v{value:g}.json"


def run_all(jobs: list[tuple], cache: Path, workers: int, quick: bool) -> None:
    """jobs: (stage, method, setting, seed, value, eval_split); each result cached as JSON, skipped if present."""
    todo = [j for j in jobs if not _result_path(cache, j[0], j[2], j[1], j[3], j[4]).is_file()]
    print(f"[nash] {len(todo)} of {len(jobs)} runs to do", flush=True)
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futs = {}
        for stage, method, setting, seed, value, split in todo:
            key = {"stage": stage, "method": method, "setting": setting, "seed": seed, "value": value}
            overrides = run_config(method, setting, seed, value, split, cache, quick)
            run_dir = cache / "work" / f"{stage}-{setting}-{method}-{seed}-{value:g}"
            futs[pool.submit(one_run, key, overrides, str(run_dir))] = (stage, method, setting, seed, value)
        for fut in as_completed(futs):
            stage, method, setting, seed, value = futs[fut]
            try:
                res = fut.result()
            except Exception as exc:  # one failed run must not lose the others
                print(f"[nash] {stage} {setting} {method} seed {seed} {value:g} failed: {exc!r}", file=sys.stderr,
                      flush=True)
                continue
            path = _result_path(cache, stage, setting, method, seed, value)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res))
            os.replace(tmp, path)
            ex = ", ".join(f"{it['exploitability']:.3f}" for it in res["iterations"])
            print(f"[nash] {stage} {setting} {method} seed {seed} {GRID[method][0]}={value:g}: exploitability {ex} "
                  f"({res['wall_s']:.0f} s)", flush=True)


def load_results(cache: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "results" / stage).rglob("*.json"))]


# --------------------------------------------------------------------------------------------- analysis

def _oracle(setting: str):
    from inpo.oracles import make_oracle

    return make_oracle(oracle_spec(setting))


def grid_means(items) -> dict[str, dict[float, tuple[float, int]]]:
    """method -> grid value -> (mean final exploitability, runs), from (method, value, exploitability) items; an
    exploitability of None (a run without iterations) is skipped."""
    by: dict[str, dict[float, list[float]]] = {}
    for method, value, e in items:
        if e is not None:
            by.setdefault(method, {}).setdefault(value, []).append(e)
    return {m: {v: (sum(xs) / len(xs), len(xs)) for v, xs in vals.items()} for m, vals in by.items()}


def best_value(means: dict[float, tuple[float, int]]) -> float:
    """The grid value with the lowest mean exploitability (ties: the smaller value)."""
    return min(means, key=lambda v: (means[v][0], v))


def tune(results: list[dict]) -> dict[str, float]:
    """Per method, the grid value with the lowest mean final-iteration exploitability on the validation prompts."""
    means = grid_means((r["method"], r["value"], r["iterations"][-1]["exploitability"] if r["iterations"] else None)
                       for r in results)
    return {m: best_value(means[m]) for m in METHODS if m in means}


def rows_of(results: list[dict]) -> list[dict]:
    """runs.jsonl lines: one per method × setting × seed × iteration (0 = π_ref), with the pool exploitability
    against every response any compared method produced for that prompt at that iteration (same seed and split)."""
    from inpo.exploitability import bootstrap_exploitability, exploitability, preference_matrices

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["setting"], r["seed"]), []).append(r)
    rows = []
    for (setting, seed), rs in sorted(groups.items()):
        oracle = _oracle(setting)
        n_iter = max(len(r["samples"]) for r in rs)
        for t in range(n_iter):
            have = [r for r in rs if str(t) in r["samples"]]
            prompts = have[0]["prompts"]
            pools = [sorted({y for r in have for y in r["samples"][str(t)][i]}) for i in range(len(prompts))]
            for r in sorted(have, key=lambda r: list(METHODS).index(r["method"])):
                samples = r["samples"][str(t)]
                # the feature-space matrices once: the estimate, its CI and the per-prompt values the summary's
                # seed × prompt bootstrap resamples
                value, lo, hi, per_prompt = bootstrap_exploitability(
                    preference_matrices(oracle, prompts, samples, kind="feature"), n_bootstrap=200, seed=seed)
                pool = exploitability(oracle, prompts, samples, kind="pool", pools=pools, n_bootstrap=200, seed=seed)
                style = exploitability(oracle, prompts, samples, kind="style", n_bootstrap=200, seed=seed)
                it = r["iterations"][t - 1] if t > 0 else {}
                q, st = zip(*[oracle.feature_arrays(x, ys) for x, ys in zip(prompts, samples)])
                rows.append({
                    "method": r["method"], "setting": setting, **SETTINGS[setting], "seed": seed, "iteration": t,
                    "param": GRID[r["method"]][0], "value": r["value"],
                    "exploitability": value, "exploitability_ci_low": lo, "exploitability_ci_high": hi,
                    "pool_exploitability": pool.value, "style_exploitability": style.value,
                    "per_prompt_exploitability": per_prompt.tolist(),
                    "win_rate_vs_ref": it.get("win_rate", 0.5), "oracle_queries": it.get("oracle_queries", 0),
                    "quality_mean": float(sum(map(float, [x.mean() for x in q])) / len(q)),
                    "style_counts": [int(sum((s == c).sum() for s in st)) for c in range(4)],
                })
    return rows


def _collapsed(rows: list[dict]) -> set[tuple]:
    last = {}
    for r in rows:
        k = (r["method"], r["setting"], r["seed"])
        if r["iteration"] >= last.get(k, {"iteration": -1})["iteration"]:
            last[k] = r
    return {k for k, r in last.items() if r["iteration"] > 0 and r["win_rate_vs_ref"] < COLLAPSE_WIN_RATE}


def summarize(rows: list[dict], tuned: dict, out: Path, note: str = "", eval_k: int = BASE["eval_k"],
              was_tuned: bool = False, rr=None, tuning_rows: list[dict] | None = None) -> str:
    import numpy as np

    from inpo.exploitability import hierarchical_bootstrap
    from inpo.utils.record import environment_info

    collapsed = _collapsed(rows)
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    n_iter = max(r["iteration"] for r in rows) + 1
    md = ["# Nash-level evidence on the language model", "",
          "Exploitability 2·max_y′ E_{y∼π} P(y′ ≻ y) − 1 of each method's iterate (0 = a Nash policy of the oracle's "
          f"game) on held-out test prompts, from {eval_k} samples per prompt; iteration 0 is π_ref. Cells: mean over seeds, "
          "with a 95 % two-level bootstrap interval (seeds, then prompts within a seed). Every seed varies π_ref "
          "(SFT seed), the prompt split and the evaluation samples. A run whose final iterate wins < "
          f"{COLLAPSE_WIN_RATE:.0%} against its own π_ref counts as collapsed: it is left out of the mean and "
          "reported by count and median.", ""]
    if tuned:
        md += [("Tuned on validation prompts at the main setting: " if was_tuned else
                "Not tuned (--no-tune): each method ran at its grid's middle value: ") +
               ", ".join(f"{m} {GRID[m][0]}={v:g}" for m, v in tuned.items()) + ".", ""]
    md += tuning_table(tuning_rows or [])
    for setting in settings:
        rs = [r for r in rows if r["setting"] == setting]
        opts = ", ".join(f"{k}={v:g}" for k, v in SETTINGS[setting].items())
        md += [f"## Setting `{setting}` ({opts}){' — main' if setting == MAIN else ''}", "",
               "| method | seeds | " + " | ".join(f"iter {t}" for t in range(n_iter)) +
               " | pool expl. (final) | style expl. (final) | win-rate vs π_ref (final) | oracle queries / iter | "
               "collapsed |", "|" + "---|" * (n_iter + 7)]
        for method in METHODS:
            mr = [r for r in rs if r["method"] == method]
            if not mr:
                continue
            ok = [r for r in mr if (method, setting, r["seed"]) not in collapsed]
            cells = []
            for t in range(n_iter):
                groups = [r["per_prompt_exploitability"] for r in ok if r["iteration"] == t]
                if groups:
                    m, lo, hi = hierarchical_bootstrap(groups, n_bootstrap=1000)
                    cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
                else:
                    cells.append("–")
            final = [r for r in ok if r["iteration"] == n_iter - 1]
            mean = (lambda k: float(np.mean([r[k] for r in final])) if final else float("nan"))
            q = [r["oracle_queries"] for r in mr if r["iteration"] > 0]
            seeds = sorted({r["seed"] for r in mr})
            bad = [r for r in mr if (method, setting, r["seed"]) in collapsed and r["iteration"] == n_iter - 1]
            coll = (f"{len(bad)} (median expl. {float(np.median([r['exploitability'] for r in bad])):.3f})"
                    if bad else "0")
            md.append(f"| {method} | {len(seeds)} | " + " | ".join(cells) +
                      f" | {mean('pool_exploitability'):.3f} | {mean('style_exploitability'):.3f} | "
                      f"{mean('win_rate_vs_ref'):.3f} | {np.mean(q) if q else 0:.0f} | {coll} |")
        md.append("")
        md += paired_table(rs, collapsed, setting, n_iter - 1)
    for setting, (methods, mat) in (rr or {}).items():
        md += [f"## Round robin of the final iterates (setting `{setting}`)", "",
               "Row method's win-rate against the column method: mean over seeds of P(row sample ≻ column sample), "
               "all sample pairs of each test prompt; 95 % two-level bootstrap interval.", "",
               "| row vs column | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
        for i, a in enumerate(methods):
            md.append(f"| {a} | " + " | ".join("–" if i == j else f"{mat[i][j][0]:.3f} [{mat[i][j][1]:.3f}, "
                                                f"{mat[i][j][2]:.3f}]" for j in range(len(methods))) + " |")
        md.append("")
    if note:
        md += [note, ""]
    env = environment_info()
    md += [f"Measured on {env['device']} (torch {env['torch']}, commit {env['commit']}, {env['date']}).", ""]
    text = "\n".join(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    return text


def tuning_table(tuning_rows: list[dict]) -> list[str]:
    """Markdown lines: mean final validation exploitability of each method at each grid value (the tuning pick in
    bold; a pick at the grid's edge is flagged, since the optimum may lie outside the grid)."""
    if not tuning_rows:
        return []
    md = ["Tuning grid (main setting, validation prompts): mean final-iteration exploitability over the tuning seeds; "
          "the pick is in bold, † marks a pick at the grid's edge.", "",
          "| method | parameter | values: mean exploitability (seeds) |", "|---|---|---|"]
    means = grid_means((r["method"], r[GRID[r["method"]][0]], r["final_exploitability"]) for r in tuning_rows)
    for method, (param, grid) in GRID.items():
        if method not in means:
            continue
        pick = best_value(means[method])
        edge = " †" if pick in (grid[0], grid[-1]) else ""
        cells = []
        for v in grid:
            if v in means[method]:
                cell = f"{v:g}: {means[method][v][0]:.3f} ({means[method][v][1]})"
                cells.append(f"**{cell}**{edge}" if v == pick else cell)
        md.append(f"| {method} | {param} | " + ", ".join(cells) + " |")
    return md + [""]


def paired_differences(rows: list[dict], collapsed: set[tuple], setting: str, method: str, other: str | None,
                       t: int):
    """(mean, lo, hi, n_seeds) of method's exploitability at iteration t minus ``other``'s at t (``None``: minus
    method's own π_ref, iteration 0), paired by seed — the same π_ref, test prompts and evaluation seed — and by
    prompt; two-level bootstrap over seeds, then prompts. Seeds where either run collapsed are left out."""
    from inpo.exploitability import hierarchical_bootstrap

    def per_prompt(m: str, it: int) -> dict[int, list[float]]:
        return {r["seed"]: r["per_prompt_exploitability"] for r in rows if r["setting"] == setting
                and r["method"] == m and r["iteration"] == it and (m, setting, r["seed"]) not in collapsed}

    a = per_prompt(method, t)
    b = per_prompt(method, 0) if other is None else per_prompt(other, t)
    seeds = sorted(set(a) & set(b))
    groups = [[x - y for x, y in zip(a[s], b[s])] for s in seeds]
    if not groups:
        return None
    return (*hierarchical_bootstrap(groups, n_bootstrap=1000), len(seeds))


def paired_table(rows: list[dict], collapsed: set[tuple], setting: str, t: int) -> list[str]:
    """Markdown lines: each method's final exploitability change from its π_ref and its difference from INPO,
    paired by seed and prompt (negative = less exploitable)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    if not methods or t < 1:
        return []

    def cell(d) -> str:
        if d is None:
            return "–"
        mark = "**" if d[1] > 0 or d[2] < 0 else ""  # interval excludes 0
        return f"{mark}{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]{mark} ({d[3]})"

    ref = "inpo" if "inpo" in methods else None
    md = [f"Paired by seed and prompt (`{setting}`, iteration {t}; negative = less exploitable; bold: the 95 % "
          "interval excludes 0; in parentheses the number of seed pairs):", "",
          "| method | final − π_ref | " + (f"final − {ref} (final) |" if ref else "|"), "|---|---|" + ("---|" if ref else "")]
    for m in methods:
        line = f"| {m} | {cell(paired_differences(rows, collapsed, setting, m, None, t))} |"
        if ref:
            line += " – |" if m == ref else f" {cell(paired_differences(rows, collapsed, setting, m, ref, t))} |"
        md.append(line)
    return md + [""]


def rr_settings(settings: list[str]) -> list[str]:
    """The settings whose final iterates play a round robin: the main one and the pure-style game, those that ran
    (else the first that ran)."""
    return [s for s in (MAIN, "style") if s in settings] or settings[:1]


def round_robin(results: list[dict], setting: str):
    """methods, [i][j] = (mean, lo, hi) win-rate of method i's final samples against method j's, over the runs of
    ``setting`` in ``results`` (None when it has none)."""
    res = [r for r in results if r["setting"] == setting]
    if not res:
        return None
    from inpo.exploitability import hierarchical_bootstrap

    oracle = _oracle(setting)
    by_seed: dict[int, dict[str, dict]] = {}
    for r in res:
        by_seed.setdefault(r["seed"], {})[r["method"]] = r
    methods = [m for m in METHODS if any(m in d for d in by_seed.values())]
    mat = [[None] * len(methods) for _ in methods]
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if i == j:
                continue
            groups = []
            for d in by_seed.values():
                if a not in d or b not in d:
                    continue
                ra, rb = d[a], d[b]
                t = str(len(ra["samples"]) - 1)
                xs, ya, yb = [], [], []
                for x, sa, sb in zip(ra["prompts"], ra["samples"][t], rb["samples"][str(len(rb["samples"]) - 1)]):
                    for u in sa:
                        for v in sb:
                            xs.append(x), ya.append(u), yb.append(v)
                p = oracle.prob_batch(xs, ya, yb)
                per = p.reshape(len(ra["prompts"]), -1).mean(axis=1)
                groups.append(per)
            mat[i][j] = hierarchical_bootstrap(groups, n_bootstrap=1000) if groups else (float("nan"),) * 3
    return methods, mat


def plots(rows: list[dict], out: Path, rr=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for method in METHODS:
            rs = [r for r in rows if r["setting"] == setting and r["method"] == method]
            if not rs:
                continue
            ts = sorted({r["iteration"] for r in rs})
            ax.plot(ts, [np.mean([r["exploitability"] for r in rs if r["iteration"] == t]) for t in ts], "o-",
                    label=method)
        ax.set(title=f"{setting}", xlabel="iteration", ylabel="exploitability (feature space)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "exploitability_vs_iteration.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        rs = [r for r in rows if r["setting"] == MAIN and r["method"] == method]
        if not rs:
            continue
        ts = sorted({r["iteration"] for r in rs})
        q = np.cumsum([np.mean([r["oracle_queries"] for r in rs if r["iteration"] == t]) for t in ts])
        ax.plot(q, [np.mean([r["exploitability"] for r in rs if r["iteration"] == t]) for t in ts], "o-",
                label=method)
    ax.set(title=f"exploitability vs cumulative oracle queries ({MAIN})", xlabel="oracle queries (training)",
           ylabel="exploitability")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "exploitability_vs_queries.png", dpi=110)
    plt.close(fig)

    for setting, (methods, mat) in (rr or {}).items():
        m = np.array([[0.5 if x is None else x[0] for x in row] for row in mat])
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(m, cmap="RdBu_r", vmin=0.3, vmax=0.7)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        for i in range(len(methods)):
            for j in range(len(methods)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, label="win-rate of row vs column")
        ax.set_title(f"round robin of final iterates ({setting})")
        fig.tight_layout()
        fig.savefig(out / ("round_robin.png" if setting == MAIN else f"round_robin_{setting}.png"), dpi=110)
        plt.close(fig)

    from inpo.oracles.synthetic import STYLES

    shown = rr_settings(settings)
    fig, axes = plt.subplots(len(shown), 2, figsize=(11, 4 * len(shown)), squeeze=False)
    final_t = max(r["iteration"] for r in rows)
    names = ["π_ref"] + list(METHODS)
    for (ax_s, ax_q), setting in zip(axes, shown):
        counts, quals = [], []
        for name in names:
            rs = [r for r in rows if r["setting"] == setting and (
                r["iteration"] == 0 if name == "π_ref" else r["method"] == name and r["iteration"] == final_t)]
            c = np.sum([r["style_counts"] for r in rs], axis=0) if rs else np.zeros(4)
            counts.append(c / max(c.sum(), 1))
            quals.append(np.mean([r["quality_mean"] for r in rs]) if rs else np.nan)
        counts = np.array(counts)
        left = np.zeros(len(names))
        for c, label in enumerate(list(STYLES) + ["no style"]):
            ax_s.barh(names, counts[:, c], left=left, label=label)
            left += counts[:, c]
        ax_s.set(title=f"style of final samples ({setting})", xlabel="fraction")
        ax_s.legend(fontsize=7)
        ax_q.barh(names, quals)
        ax_q.set(title=f"mean quality of final samples ({setting})", xlabel="quality", xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(out / "style_quality.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/nash-lm")
    ap.add_argument("--cache", default=None, help="where runs are cached (default: <repo>/.cache/nash-lm, or "
                                                  "OUT/.cache with --quick)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds at the main setting")
    ap.add_argument("--side-seeds", type=int, default=5, help="seeds at the other settings")
    ap.add_argument("--tune-seeds", type=int, default=2, help="seeds of the tuning grid (seed numbers from 100)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-tune", action="store_true", help="use each grid's middle value instead of tuning")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: 1 seed, 1 iteration, few prompts (CI)")
    ap.add_argument("--note", default="", help="a line added to summary.md (e.g. why results are partial)")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    for name, given, valid in (("--methods", methods, METHODS), ("--settings", settings, SETTINGS)):
        bad = [x for x in given if x not in valid]
        if bad or not given:
            ap.error(f"{name}: unknown or empty {bad or given}; valid: {', '.join(valid)}")
    for name in ("seeds", "side_seeds", "tune_seeds", "workers"):
        if getattr(args, name) < (0 if name == "tune_seeds" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else (out / ".cache" if args.quick else ROOT / ".cache" / "nash-lm")
    if args.quick:
        args.seeds, args.side_seeds, args.tune_seeds, args.no_tune = 1, 1, 0, True
        settings = settings[:1] if args.settings == ",".join(SETTINGS) else settings
    from inpo.data.tokenizer import default_tokenizer
    from inpo.train.model import build_default_policy

    build_default_policy(default_tokenizer())  # π_ref of seed 0 (cached) before workers race to build it
    tuned = {m: GRID[m][1][len(GRID[m][1]) // 2] for m in methods}
    tuning_rows = []
    if not args.no_tune and args.tune_seeds:
        jobs = [("tune", m, MAIN, 100 + s, v, "val") for s in range(args.tune_seeds) for m in methods
                for v in GRID[m][1]]
        run_all(jobs, cache, args.workers, args.quick)
        tune_results = load_results(cache, "tune")
        tuned.update(tune(tune_results))
        tuning_rows = [{"method": r["method"], "seed": r["seed"], GRID[r["method"]][0]: r["value"],
                        "wall_s": r["wall_s"],
                        "final_exploitability": r["iterations"][-1]["exploitability"] if r["iterations"] else None,
                        "final_win_rate": r["iterations"][-1]["win_rate"] if r["iterations"] else None}
                       for r in tune_results]
    jobs = [("final", m, st, s, tuned[m], "test") for st in settings
            for s in range(args.seeds if st == MAIN else args.side_seeds) for m in methods]
    run_all(jobs, cache, args.workers, args.quick)
    results = [r for r in load_results(cache, "final")
               if r["method"] in methods and r["setting"] in settings and r["value"] == tuned[r["method"]]]
    if not results:
        print("[nash] no finished runs to report", file=sys.stderr)
        return 1
    rows = rows_of(results)
    rr = {st: m for st in rr_settings(settings) if (m := round_robin(results, st))}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "runs.jsonl.tmp"
    tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "per_prompt_exploitability"}) + "\n"
                           for r in rows))
    os.replace(tmp, out / "runs.jsonl")
    if tuning_rows:
        (out / "tuning.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tuning_rows))
    (out / "tuned.json").write_text(json.dumps(tuned, indent=1))
    wall = [r["wall_s"] for r in results + tuning_rows]
    compute = (f"Compute: {len(results)} final and {len(tuning_rows)} tuning runs, {sum(wall) / 3600:.1f} h of "
               f"single-thread training and evaluation in all (median {sorted(wall)[len(wall) // 2]:.0f} s a run).")
    note = "\n\n".join(x for x in (args.note, compute) if x)
    text = summarize(rows, tuned, out, note, eval_k=(QUICK if args.quick else BASE)["eval_k"],
                     was_tuned=bool(tuning_rows), rr=rr, tuning_rows=tuning_rows)
    plots(rows, out, rr)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
