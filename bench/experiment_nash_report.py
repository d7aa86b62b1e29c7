"""The report of bench/experiment_nash.py: per-iterate rows (runs.jsonl), closed-form predictions, summary.md, plots.

Everything here is recomputed from the cached runs' evaluation samples; runs.jsonl keeps, per iterate, each prompt's
style counts and its cross-fit and plug-in values, so every interval of summary.md can be recomputed from the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bench.nash_protocol import (ARMS, CALIBRATION_SEED, LEVELS, OFF_TARGET, PRIMARY, REFERENCE_ARM, SEEDS, SETTINGS,
                                 STYLES,
                                 kl, oracle_of, style_counts, style_matrix)
from inpo.exploitability import (estimate_exploitability, hierarchical_bootstrap, pooled_from_means,
                                 preference_matrices, prompt_folds)
from inpo.games import duality_gap, realised_step, regularized_nash, solve
from inpo.utils.record import environment_info

LATE = (8, 15)  # the window of the "worst iterate" endpoint
N_BOOT = 2000  # replicates of the summary's two-level bootstraps
ANALYSIS_VERSION = 1  # bump when a row's definition changes: cached rows are recomputed


def mats_of(setting: str, counts: np.ndarray) -> list[np.ndarray]:
    """Per prompt the [4, K] style-part matrix P(challenger class ≻ sample) rebuilt from its style counts (the
    cross-fit halves its columns at random, so their order carries nothing)."""
    P = style_matrix(setting)
    return [P[:, np.repeat(np.arange(4), c)] for c in counts]


def pooled_of(setting: str, counts: np.ndarray, folds: np.ndarray | None) -> float:
    """Pooled style exploitability from per-prompt counts [N, 4], cross-fitted over ``folds`` (a fold label 0/1 per
    prompt) or plain when None (or when a fold is empty)."""
    counts = np.asarray(counts, np.float64)
    means = counts @ style_matrix(setting).T / counts.sum(axis=1, keepdims=True)  # [N, 4]: challengers' values
    groups = None if folds is None else [np.flatnonzero(folds == f) for f in (0, 1)]
    if groups is not None and min(len(g) for g in groups) == 0:
        groups = None
    return pooled_from_means(means, folds=groups)


# --------------------------------------------------------------------------------------------------- rows

def rotation(mix: np.ndarray) -> tuple[float, float]:
    """(angle in turns, distance) of the styled mix (rock, paper, scissors renormalised) around the uniform mix:
    rock at 0, paper at +⅓, scissors at +⅔ turn, so a positive change is a move in the best-response direction
    (rock → paper → scissors → rock); distance = total variation from uniform."""
    styled = np.asarray(mix[:3], np.float64)
    q = styled / max(styled.sum(), 1e-12)
    ang = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    x, y = float(q @ np.cos(ang)), float(q @ np.sin(ang))
    return (math.atan2(y, x) / (2 * math.pi)) % 1.0, 0.5 * float(np.abs(q - 1 / 3).sum())


def _turn(prev: float, cur: float) -> float:
    d = cur - prev
    return d - round(d)  # wrapped to (−½, ½] turn


def _estimates(setting: str, counts: np.ndarray, seed: int) -> dict:
    est = estimate_exploitability(mats_of(setting, counts), n_bootstrap=400, seed=seed)
    out = {}
    for name, (v, lo, hi) in (("crossfit", est.crossfit), ("plugin", est.plugin), ("pooled", est.pooled)):
        out.update({name: v, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    out["per_prompt_crossfit"] = est.crossfit_per_prompt
    out["per_prompt_plugin"] = est.plugin_per_prompt
    return out


def _feature_estimates(setting: str, prompts: list, samples: list, seed: int) -> dict:
    """The whole game (quality and style) where quality plays a part: cross-fit and pooled, no intervals."""
    if SETTINGS[setting]["alpha"] == 0:
        return {}
    est = estimate_exploitability(preference_matrices(oracle_of(setting), prompts, samples, kind="feature"),
                                  n_bootstrap=1, seed=seed)
    return {"feature_crossfit": est.crossfit[0], "feature_plugin": est.plugin[0], "feature_pooled": est.pooled[0]}


def run_rows(job, result: dict) -> list[dict]:
    """One row per iterate t = 0..T of one run (iterate 0 = π_ref, shared by the arms of a seed)."""
    setting, seed, prompts = job.setting, job.seed, result["prompts"]
    T = len(result["samples"]) - 1
    counts = [style_counts(setting, prompts, result["samples"][str(t)]) for t in range(T + 1)]
    folds = np.zeros(len(prompts), np.int64)
    parts = prompt_folds(len(prompts), seed)
    if len(parts) == 2:
        folds[parts[1]] = 1
    rows, cum, prev = [], 0.0, None
    for t in range(T + 1):
        mix = counts[t].sum(axis=0) / counts[t].sum()
        angle, dist = rotation(mix)
        turn = _turn(prev, angle) if prev is not None and dist >= 0.05 and rows[-1]["tv_to_uniform"] >= 0.05 else 0.0
        cum += turn
        prev = angle
        it = result["iterations"][t - 1] if t > 0 else {}
        avg = sum(counts[1:t + 1]) if t > 0 else counts[0]
        rows.append({
            "setting": setting, "level": job.level, "arm": job.arm, "seed": seed, "iteration": t,
            "param": ARMS[job.arm]["param"], "value": job.value, **_estimates(setting, counts[t], seed),
            **_feature_estimates(setting, prompts, result["samples"][str(t)], seed),
            "avg_pooled": pooled_of(setting, avg, folds), "plain_pooled": pooled_of(setting, counts[t], None),
            "style_mix": mix.tolist(), "unstyled": float(mix[3]), "tv_to_uniform": dist, "angle": angle,
            "dominant": STYLES[int(np.argmax(mix[:3]))], "turn": turn, "cum_turns": cum,
            "kl_prev": kl(counts[t].sum(0), counts[t - 1].sum(0)) if t else 0.0,
            "kl_ref": kl(counts[t].sum(0), counts[0].sum(0)),
            "win_rate_vs_ref": it.get("win_rate", 0.5), "oracle_queries": it.get("oracle_queries", 0),
            "pairs": it.get("pairs", 0), "folds": folds, "per_prompt_style_counts": counts[t],
        })
    return rows


def predict(job, rows: list[dict]) -> dict:
    """The style bandit's closed-form prediction for this run: its π_ref mix, the step realising the run's
    first-iteration KL, the predicted pooled exploitability per iterate and (INPO, IPO) the regularised Nash policy
    at the realised τ, the predicted fixed point."""
    P = style_matrix(job.setting)
    c0 = np.asarray(rows[0]["per_prompt_style_counts"]).sum(axis=0) + 0.5
    pi0 = c0 / c0.sum()
    algorithm, ratio = ARMS[job.arm]["bandit"]
    start = {"onpo_start": "update"} if algorithm == "onpo" else {}
    out = {"arm": job.arm, "setting": job.setting, "level": job.level, "seed": job.seed, "pi_ref_mix": pi0.tolist()}
    if len(rows) < 2:
        return out
    kl1 = rows[1]["kl_ref"]
    try:
        eta = realised_step(P, algorithm, kl1, pi0=pi0, ratio=ratio, **start)
    except ValueError as exc:
        return {**out, "error": str(exc)}
    tau = ratio * eta if algorithm == "inpo" else 0.0
    pol = solve(P, algorithm, iters=len(rows) - 1, eta=eta, tau=tau, pi_ref=pi0, pi0=pi0, **start)
    out.update({"first_kl": kl1, "realised_step": eta, "predicted": [duality_gap(P, p) for p in pol],
                "predicted_mix": pol.tolist()})
    fixed_tau = tau if algorithm == "inpo" else (eta if algorithm == "ipo" else 0.0)
    if fixed_tau > 0:
        star = regularized_nash(P, tau=fixed_tau, pi_ref=pi0)
        out.update({"fixed_point_tau": fixed_tau, "fixed_point": duality_gap(P, star), "fixed_point_mix": star.tolist()})
    return out


def _jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, float):
            v = round(v, 6)
        elif isinstance(v, list) and v and isinstance(v[0], float):
            v = [round(x, 6) for x in v]
        out[k] = v
    return out


def analyse(cache: Path, job, result: dict) -> tuple[list[dict], dict]:
    """(rows, prediction) of one run, cached beside the run (recomputed when ANALYSIS_VERSION changes)."""
    path = cache / "analysis" / f"{job.analysis_key}.json"
    if path.is_file():
        got = json.loads(path.read_text())
        if got.get("version") == ANALYSIS_VERSION:
            return got["rows"], got["prediction"]
    rows = run_rows(job, result)
    pred = predict(job, rows)
    rows = [_jsonable(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": ANALYSIS_VERSION, "rows": rows, "prediction": _jsonable(pred)}))
    tmp.replace(path)
    return rows, _jsonable(pred)


# ------------------------------------------------------------------------------------------------- statistics

def _by(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _last_t(rows: list[dict]) -> int:
    return max(r["iteration"] for r in rows)


def _block(rows: list[dict], seed: int, arm: str, ts: list[int], setting: str, level: str) -> np.ndarray | None:
    """[N, len(ts)·4] per-prompt style counts of ``arm``'s iterates ``ts`` on ``seed`` (None if any is missing)."""
    out = []
    for t in ts:
        hit = _by(rows, setting=setting, level=level, arm=arm, seed=seed, iteration=t)
        if not hit:
            return None
        out.append(np.asarray(hit[0]["per_prompt_style_counts"], np.float64))
    return np.concatenate(out, axis=1)


ENDPOINTS = {
    "last": "last iterate (t = T)",
    "worst": f"worst iterate over t ∈ [{LATE[0]}, {LATE[1]}]",
    "average": "average iterate (t = 1..T)",
}


def _iterates(endpoint: str, T: int) -> list[int]:
    if endpoint == "worst":
        return [t for t in range(LATE[0], LATE[1] + 1) if t <= T] or [T]
    return list(range(1, T + 1)) if endpoint == "average" else [T]


def _value(setting: str, endpoint: str, folds: np.ndarray, counts: np.ndarray) -> float:
    """The endpoint's pooled value from counts [N, n_t·4] of its iterates."""
    blocks = counts.reshape(len(counts), -1, 4)
    if endpoint == "average":
        return pooled_of(setting, blocks.sum(axis=1), folds)
    vals = [pooled_of(setting, blocks[:, i], folds) for i in range(blocks.shape[1])]
    return max(vals)


def endpoint(rows: list[dict], setting: str, level: str, arm: str, other: str | None, which: str,
             n_bootstrap: int = N_BOOT, confidence: float = 0.95):
    """(mean over seeds, ci_low, ci_high, per-seed values) of ``arm``'s endpoint value, or of its difference from
    ``other``'s, paired by seed and by prompt; two-level bootstrap (seeds, then prompts), recomputing each pooled
    value on the resampled prompts. None when no seed has both arms."""
    sub = _by(rows, setting=setting, level=level)
    if not sub:
        return None
    ts = _iterates(which, _last_t(sub))
    groups = []
    for seed in sorted({r["seed"] for r in sub}):
        a = _block(sub, seed, arm, ts, setting, level)
        b = _block(sub, seed, other, ts, setting, level) if other else np.zeros((0, 0))
        if a is None or b is None:
            continue
        folds = np.asarray(_by(sub, arm=arm, seed=seed, iteration=0)[0]["folds"], np.float64)[:, None]
        groups.append(np.concatenate([folds, a, b], axis=1) if other else np.concatenate([folds, a], axis=1))
    if not groups:
        return None
    width = len(ts) * 4

    def stat(g: np.ndarray) -> float:
        f = g[:, 0].astype(np.int64)
        v = _value(setting, which, f, g[:, 1:1 + width])
        return v - _value(setting, which, f, g[:, 1 + width:]) if other else v

    mean, lo, hi = hierarchical_bootstrap(groups, stat=stat, n_bootstrap=n_bootstrap, seed=0, level=confidence)
    return mean, lo, hi, [stat(g) for g in groups]


def _fmt(d, signed: bool = False) -> str:
    if d is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    mark = "**" if signed and (d[1] > 0 or d[2] < 0) else ""
    return f"{mark}{f.format(d[0])}{mark} [{f.format(d[1])}, {f.format(d[2])}]"


def _seeds(d) -> str:
    if d is None:
        return "–"
    pos = sum(x > 0 for x in d[3])
    return f"{', '.join(f'{x:+.3f}' for x in d[3])} ({pos}/{len(d[3])} > 0)"


# ----------------------------------------------------------------------------------------------------- tables

def _arms(rows: list[dict]) -> list[str]:
    return [a for a in ARMS if any(r["arm"] == a for r in rows)]


def _combos(rows: list[dict]) -> list[tuple[str, str]]:
    have = {(r["setting"], r["level"]) for r in rows}
    return [(s, lv) for s in SETTINGS for lv in LEVELS if (s, lv) in have]


def _pred(preds: list[dict], setting: str, level: str, arm: str, key: str, t: int | None = None):
    vals = [p[key] if t is None else p[key][t] for p in preds
            if p["setting"] == setting and p["level"] == level and p["arm"] == arm and key in p
            and (t is None or t < len(p[key]))]
    return float(np.mean(vals)) if vals else None


def calibration_table(picks: dict[str, dict]) -> list[str]:
    md = ["| group (arms) | parameter | value: first-iteration KL(π_1 ‖ π_0) of the pooled style mix | large step "
          f"(KL ≈ {LEVELS['large']}) | small step (KL ≈ {LEVELS['small']}) |", "|---|---|---|---|---|"]
    for g, c in picks.items():
        arms = ", ".join(a for a, spec in ARMS.items() if spec["group"] == g)
        cells = ", ".join(f"{v}: {'–' if k is None else f'{k:.3f}'}" for v, k in c["kl"].items())
        pk = []
        for lv, target in LEVELS.items():
            got = c["kl"].get(f"{c['picks'][lv]:g}")
            off = got is not None and abs(math.log(max(got, 1e-12) / target)) > math.log(OFF_TARGET)
            pk.append(f"**{c['picks'][lv]:g}**" + (f" (KL {got:.3f})" if got is not None else "")
                      + (" † saturated" if c.get("saturated", {}).get(lv) else " † edge" if c["edge"][lv] else "")
                      + (" — off target" if off else ""))
        md.append(f"| {g} ({arms}) | {c['param']} | {cells} | {pk[0]} | {pk[1]} |")
    return md + ["", "† a pick on the grid's edge after widening it (the target KL is outside what the grid reaches); "
                     "*saturated*: the KL stopped moving with the parameter there — the first iteration is limited by "
                     "the optimiser (learning rate × steps), so that arm's step is as large as this training budget "
                     f"makes it. *Off target*: the pick's KL is more than {OFF_TARGET}× from the target (after up to "
                     "two refinements); such an arm runs at the step it can reach, and the realised KLs below say "
                     "which.", ""]


def steps_table(rows: list[dict], preds: list[dict]) -> list[str]:
    md = ["| setting | step | arm | parameter | first-iteration KL: mean [min, max] over seeds | realised bandit step "
          "(η, or β for DPO/IPO) |", "|---|---|---|---|---|---|"]
    for setting, level in _combos(rows):
        for arm in _arms(rows):
            first = [r["kl_ref"] for r in _by(rows, setting=setting, level=level, arm=arm, iteration=1)]
            if not first:
                continue
            val = _by(rows, setting=setting, level=level, arm=arm)[0]
            step = _pred(preds, setting, level, arm, "realised_step")
            md.append(f"| {setting} | {level} | {arm} | {val['param']} = {val['value']:g} | {np.mean(first):.3f} "
                      f"[{min(first):.3f}, {max(first):.3f}] | {'–' if step is None else f'{step:.3g}'} |")
    return md + [""]


def primary_table(rows: list[dict], preds: list[dict], setting: str, level: str) -> list[str]:
    sub = _by(rows, setting=setting, level=level)
    T = _last_t(sub)
    arms = _arms(sub)
    adjusted = 1 - 0.05 / max(len(arms) - 1, 1)  # Bonferroni over the comparisons with INPO
    md = [f"| arm | pooled exploitability at t = {T} | − {REFERENCE_ARM}, paired | per-seed differences | bandit "
          f"prediction at t = {T} | predicted fixed point |", "|---|---|---|---|---|---|"]
    for arm in arms:
        own = endpoint(sub, setting, level, arm, None, "last")
        diff = adj = None
        if arm != REFERENCE_ARM:
            diff = endpoint(sub, setting, level, arm, REFERENCE_ARM, "last")
            adj = endpoint(sub, setting, level, arm, REFERENCE_ARM, "last", confidence=adjusted)
        mark = " ‡" if adj is not None and (adj[1] > 0 or adj[2] < 0) else ""
        pred = _pred(preds, setting, level, arm, "predicted", T)
        fixed = _pred(preds, setting, level, arm, "fixed_point")
        md.append(f"| {arm} | {_fmt(own)} | {_fmt(diff, True)}{mark} | {_seeds(diff)} | "
                  f"{'–' if pred is None else f'{pred:.3f}'} | {'–' if fixed is None else f'{fixed:.3f}'} |")
    return md + ["", f"‡ also excludes 0 at {adjusted:.2%} (Bonferroni over the {len(arms) - 1} comparisons with "
                     f"{REFERENCE_ARM}).", ""]


def secondary_table(rows: list[dict], setting: str, level: str) -> list[str]:
    sub = _by(rows, setting=setting, level=level)
    T = _last_t(sub)
    md = [f"| arm | {ENDPOINTS['worst']} | − {REFERENCE_ARM} | {ENDPOINTS['average']} | − {REFERENCE_ARM} | "
          f"per-prompt cross-fit at t = {T} (plug-in upper bracket) | unstyled | styled mix r/p/s | turns |",
          "|---|---|---|---|---|---|---|---|---|"]
    for arm in _arms(sub):
        cells = []
        for which in ("worst", "average"):
            cells.append(_fmt(endpoint(sub, setting, level, arm, None, which)))
            cells.append("–" if arm == REFERENCE_ARM else _fmt(endpoint(sub, setting, level, arm, REFERENCE_ARM,
                                                                        which), True))
        last = _by(sub, arm=arm, iteration=T)
        cf = np.mean([r["crossfit"] for r in last])
        plug = np.mean([r["plugin"] for r in last])
        mix = np.mean([r["style_mix"] for r in last], axis=0)
        styled = mix[:3] / max(mix[:3].sum(), 1e-12)
        turns = np.mean([r["cum_turns"] for r in last])
        cells += [f"{cf:.3f} ({plug:.3f})", f"{mix[3]:.2f}", "/".join(f"{x:.2f}" for x in styled), f"{turns:+.2f}"]
        md.append(f"| {arm} | " + " | ".join(cells) + " |")
    return md + [""]


def trajectory_table(rows: list[dict], preds: list[dict], setting: str, level: str) -> list[str]:
    sub = _by(rows, setting=setting, level=level)
    T = _last_t(sub)
    md = ["| arm | " + " | ".join(f"t={t}" for t in range(T + 1)) + " |", "|---|" + "---|" * (T + 1)]
    for arm in _arms(sub):
        cells = []
        for t in range(T + 1):
            vals = [r["pooled"] for r in _by(sub, arm=arm, iteration=t)]
            pred = _pred(preds, setting, level, arm, "predicted", t)
            cells.append(("–" if not vals else f"{np.mean(vals):.3f}") + ("" if pred is None else f" ({pred:.2f})"))
        md.append(f"| {arm} | " + " | ".join(cells) + " |")
    return md + [""]


# ---------------------------------------------------------------------------------------------------- verdict

def _compare(sub: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """The other arms whose last iterate is (more, less, not separated) exploitable than INPO's, by the paired
    95 % interval of arm − INPO at the primary endpoint."""
    more, less, tied = [], [], []
    for arm in _arms(sub):
        d = None if arm == REFERENCE_ARM else endpoint(sub, PRIMARY, "large", arm, REFERENCE_ARM, "last")
        if d is not None:
            (more if d[1] > 0 else less if d[2] < 0 else tied).append(f"{arm} ({d[0]:+.3f})")
    return more, less, tied


def verdict(rows: list[dict], preds: list[dict], planned_seeds: int) -> list[str]:
    """The primary endpoint in plain words, whichever way it falls."""
    sub = _by(rows, setting=PRIMARY, level="large")
    if not sub or not _by(sub, arm=REFERENCE_ARM):
        return ["**Verdict:** not yet measured (no primary-endpoint runs of INPO in the cache).", ""]
    T = _last_t(sub)
    seeds = len({r["seed"] for r in _by(sub, arm=REFERENCE_ARM, iteration=T)})
    partial = "" if seeds >= planned_seeds else f" of {planned_seeds} planned: provisional"
    more, less, tied = _compare(sub)  # more: arms more exploitable than INPO, i.e. INPO is less exploitable
    means = {a: np.mean([r["pooled"] for r in _by(sub, arm=a, iteration=T)]) for a in _arms(sub)}
    best = min(means, key=means.get)
    words = [f"**Verdict (primary endpoint: `{PRIMARY}`, large step, last iterate t = {T}, {seeds} seed(s){partial}):**"
             f" INPO's last iterate has pooled style exploitability "
             f"{_fmt(endpoint(sub, PRIMARY, 'large', REFERENCE_ARM, None, 'last'))}. It is less exploitable than "
             f"{', '.join(more) or 'no other arm'}; more exploitable than {', '.join(less) or 'no other arm'}; not "
             f"separated from {', '.join(tied) or 'any other arm'} (paired differences arm − INPO, 95 % intervals per "
             f"comparison; ‡ in the table below marks those that hold after a Bonferroni correction). The least "
             f"exploitable last iterate is {best}'s ({means[best]:.3f}); the Nash policy has 0."]
    pred = _pred(preds, PRIMARY, "large", REFERENCE_ARM, "predicted", T)
    fixed = _pred(preds, PRIMARY, "large", REFERENCE_ARM, "fixed_point")
    if pred is not None:
        words.append(f"The style bandit at INPO's realised step predicts {pred:.3f} at t = {T}"
                     + (f" and a fixed point at {fixed:.3f}" if fixed is not None else "")
                     + f"; the LM reached {means[REFERENCE_ARM]:.3f}.")
    return [" ".join(words), ""]


# ------------------------------------------------------------------------------------------------------ plots

def _panels(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos, arms = _combos(rows), _arms(rows)
    fig, axes = plt.subplots(len(combos), len(arms), figsize=(2.8 * len(arms), 2.6 * len(combos)), squeeze=False,
                             sharey=True)
    return plt, fig, axes, combos, arms


def _grid_plot(rows: list[dict], path: Path, draw, *, ylabel: str, legend_loc: str = "best") -> None:
    """One panel per (setting, step) row and arm column; ``draw(ax, rows of the panel, setting, level, arm, ts)``."""
    plt, fig, axes, combos, arms = _panels(rows)
    for i, (setting, level) in enumerate(combos):
        for j, arm in enumerate(arms):
            ax, sub = axes[i][j], _by(rows, setting=setting, level=level, arm=arm)
            if not sub:
                ax.set_axis_off()
                continue
            draw(ax, sub, setting, level, arm, sorted({r["iteration"] for r in sub}))
            ax.set_title(f"{arm} ({setting}, {level})", fontsize=8)
            ax.set_xlabel("iteration", fontsize=7)
            ax.tick_params(labelsize=7)
        axes[i][0].set_ylabel(ylabel, fontsize=7)
    axes[0][0].legend(fontsize=6, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_exploitability(rows: list[dict], preds: list[dict], path: Path) -> None:
    """Per panel: each seed's pooled value (thin), their mean (thick), the per-prompt cross-fit/plug-in bracket
    (shaded), the bandit's prediction (dashed) and, for INPO / IPO, the predicted fixed point (dotted)."""
    def draw(ax, sub, setting, level, arm, ts):
        for seed in sorted({r["seed"] for r in sub}):
            ax.plot(ts, [_by(sub, seed=seed, iteration=t)[0]["pooled"] for t in ts], color="C0", lw=0.6, alpha=0.4)
        mean = lambda k: [np.mean([r[k] for r in _by(sub, iteration=t)]) for t in ts]  # noqa: E731
        ax.plot(ts, mean("pooled"), color="C0", lw=2, label="pooled (LM)")
        ax.fill_between(ts, mean("crossfit"), mean("plugin"), color="C1", alpha=0.2, label="per-prompt bracket")
        pred = [p for p in preds if p["setting"] == setting and p["level"] == level and p["arm"] == arm
                and "predicted" in p]
        if pred:
            ax.plot(range(len(pred[0]["predicted"])), np.mean([p["predicted"] for p in pred], axis=0), "k--",
                    lw=1.2, label="bandit prediction")
        fixed = _pred(preds, setting, level, arm, "fixed_point")
        if fixed is not None:
            ax.axhline(fixed, color="k", ls=":", lw=1, label="predicted fixed point")

    _grid_plot(rows, path, draw, ylabel="style exploitability")


def plot_style_mix(rows: list[dict], path: Path) -> None:
    """Per panel: the pooled style mix (mean over seeds) per iterate, stacked."""
    def draw(ax, sub, setting, level, arm, ts):
        mix = np.array([np.mean([r["style_mix"] for r in _by(sub, iteration=t)], axis=0) for t in ts])
        ax.stackplot(ts, mix.T, labels=STYLES, colors=["C3", "C0", "C2", "0.75"])
        ax.set_ylim(0, 1)

    _grid_plot(rows, path, draw, ylabel="style mix", legend_loc="lower left")


def plot_calibration(picks: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for g, c in picks.items():
        pts = sorted((float(v), k) for v, k in c["kl"].items() if k is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{g} ({c['param']})")
    for level, target in LEVELS.items():
        ax.axhline(target, color="k", ls=":", lw=1)
        ax.text(ax.get_xlim()[0], target, f" {level}", fontsize=7, va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="parameter value", ylabel="first-iteration KL of the pooled style mix",
           title="calibration (one iteration per value)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------- report

PROTOCOL = f"""Fixed before the final runs (bench/experiment_nash.py; issue 20):

- **Question.** At matched steps and over 15 iterations, is INPO's last iterate less exploitable than the baselines'?
- **Primary endpoint.** The pooled style exploitability (the exploitability of the prompt-pooled style mix, exact over
  the style classes, cross-fitted over two folds of prompts) of the **last iterate, t = 15**, in the `{PRIMARY}`
  setting at the **large** matched step; each arm minus INPO (τ/η = 1/3, tournament pairs), **paired by seed** (same
  π_ref, prompt split and evaluation samples) and by prompt; 95 % two-level bootstrap (seeds, then prompts).
- **Secondary endpoints.** The worst iterate over t ∈ [{LATE[0]}, {LATE[1]}]; the average iterate (t = 1..15); the
  per-prompt cross-fit estimate (lower bracket) with the plug-in (upper bracket); the same at the small step; the
  `cyclic` setting scored on its style part (and its whole game, quality included, as a note).
- **Matched steps.** Calibration seed {{cal}}: one iteration per value of a 5-value log grid (factor 4) per method on
  validation prompts; per method the value whose first iteration moves the pooled style mix by KL(π_1 ‖ π_0) closest
  to {LEVELS['large']} (large) and {LEVELS['small']} (small) on a log scale; an edge pick widens the grid on that
  side (up to 3 values, not past a saturated edge where the KL no longer moves) and runs again; a pick more than
  {OFF_TARGET}× off its target gets the geometric midpoint toward it (at most twice). The `cyclic` runs use the `{PRIMARY}` calibration; their realised KL is
  reported.
- **Arms.** INPO τ/η = 1/3, τ/η = 0.1, τ = 0; INPO with random pairs (Lemma 5's population); ONPO; iterative DPO;
  IPO. Tournament arms: K = 8, 11 oracle queries per prompt; random pairs: K = 2, one query per prompt (equal queries
  would need 11× the pairs and training compute).
- **Runs.** T = 15 iterations of 128 training prompts each (a fresh subset per iteration), every iterate evaluated
  on the 109 held-out test prompts with eval_k = 16; seeds: {{seeds}}; `cyclic` runs INPO, INPO τ = 0, ONPO, DPO
  and IPO only (the CPU budget).
- **Predictions.** The style bandit in closed form at each run's realised step (the game step reproducing its
  first-iteration KL from its own π_ref mix); for INPO and IPO the regularised Nash policy at the realised τ."""


def summary_text(picks, rows, preds, calib_results, planned: int, note: str, compute: str) -> str:
    seeds = ", ".join(f"{n} ({s}, {lv})" for (s, lv), n in SEEDS.items())
    md = ["# Nash-level evidence on the language model, round 2: matched steps, 15 iterations", "",
          "## Protocol", "", PROTOCOL.replace("{cal}", str(CALIBRATION_SEED)).replace("{seeds}", seeds), "",
          *verdict(rows, preds, SEEDS[(PRIMARY, "large")]),
          "## Calibration", "", *calibration_table(picks), "### Realised steps of the final runs", "",
          *steps_table(rows, preds)]
    for setting, level in _combos(rows):
        title = f"`{setting}`, {level} step" + (" — primary" if (setting, level) == (PRIMARY, "large") else "")
        md += [f"## {title}", "", "Last iterate (pooled style exploitability; mean over seeds, 95 % two-level "
               "interval; bold: the paired interval excludes 0; positive = the arm is more exploitable than INPO):", "",
               *primary_table(rows, preds, setting, level), "Secondary endpoints:", "",
               *secondary_table(rows, setting, level),
               "Every iterate (pooled, mean over seeds; in parentheses the bandit's prediction at the realised step):",
               "", *trajectory_table(rows, preds, setting, level)]
    md += ["## Notes", "",
           "- *Turns*: the signed rotation of the styled mix around the uniform mix, summed over iterates, in turns "
           "(+1 = one full cycle rock → paper → scissors, the best-response direction); steps where the mix is "
           "within 0.05 (total variation) of uniform count 0.",
           "- runs.jsonl: one line per setting × step × arm × seed × iterate, with each prompt's style counts "
           "(`per_prompt_style_counts`), cross-fit and plug-in values and the fold labels, from which every interval "
           "here is recomputed; predictions.jsonl: the bandit predictions; calibration.json: the grid and picks.",
           "- π_ref is rebuilt per seed at run time (SFT on CPU) and cached; it is not promised bit-identical across "
           "machines or torch builds (issue 20 found 58.9 % vs 56.9 % unstyled for seed 0), so every comparison here is "
           "paired within this record (iterate 0 of every row is the run's own π_ref).",
           "- Not in this round (the CPU budget): a transitive control (the 3-iteration record had one: "
           "bench/results/nash-lm-3iter), SPPO, and equal oracle queries for random pairs.",
           f"- {planned - len({(r['setting'], r['level'], r['arm'], r['seed']) for r in rows})} of {planned} "
           "planned final runs are missing from this report." if planned else "", note, compute, ""]
    env = environment_info()
    md += [f"Measured on {env['device']} (torch {env['torch']}, commit {env['commit']}, {env['date']}).", ""]
    return "\n".join(x for x in md if x is not None)


def write_report(out: Path, picks: dict, results: list, calib_results: list, *, planned: int, note: str = "",
                 quick: bool = False, cache: Path) -> str:
    """Analyse every finished run and write runs.jsonl, predictions.jsonl, calibration.json, summary.md and plots."""
    rows, preds = [], []
    for job, res in results:
        r, p = analyse(cache, job, res)
        rows += r
        preds.append(p)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("runs.jsonl", rows), ("predictions.jsonl", preds)):
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(x) + "\n" for x in items))
        tmp.replace(out / name)
    (out / "calibration.json").write_text(json.dumps(picks, indent=1))
    runs = list({job.key: r for job, r in results}.values())  # a run serving both step levels counts once
    cpu = [r["cpu_s"] for r in runs + calib_results]
    wall = [r["wall_s"] for r in runs + calib_results]
    loads = [x for r in runs + calib_results for x in r.get("load", [])]
    compute = (f"Compute: {len(runs)} final and {len(calib_results)} calibration runs, {sum(cpu) / 3600:.2f} h of "
               f"single-thread CPU ({sum(wall) / 3600:.2f} h of run wall time; load average "
               f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f} at run starts and ends).")
    text = summary_text(picks, rows, preds, calib_results, planned, note, compute)
    (out / "summary.md").write_text(text)
    plot_exploitability(rows, preds, out / "exploitability_vs_iteration.png")
    plot_style_mix(rows, out / "style_mix.png")
    plot_calibration(picks, out / "calibration.png")
    return text
