"""Statistics, plots and Markdown for the games sweeps: bootstrap CIs over seeds, log-log slope fits,
atomic file writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from inpo import _optional

__all__ = ["mean_ci", "loglog_slope", "slope_ci", "checkpoints", "write_json", "write_text",
           "plot_gap_curves", "md_table", "fmt_ci"]


def mean_ci(x, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x`` over seeds with a percentile-bootstrap confidence interval (no scipy needed, and
    honest for the skewed gap distributions). One value gives a degenerate interval."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return (m, float(lo), float(hi))


def mean_ci_curves(curves: np.ndarray, **kw) -> np.ndarray:
    """Row-wise :func:`mean_ci` of ``[seeds, points]`` → ``[3, points]`` (mean, lo, hi)."""
    return np.array([mean_ci(curves[:, j], **kw) for j in range(curves.shape[1])]).T


def loglog_slope(t, gap, *, start_frac: float = 0.1, floor: float = 1e-14) -> float:
    """Least-squares slope of log gap against log t over t ∈ [start_frac·T, T] (t ≥ 1). Gaps are
    floored at ``floor`` so a curve that reached machine zero gives a steep, finite slope."""
    t = np.asarray(t, dtype=np.float64)
    g = np.maximum(np.asarray(gap, dtype=np.float64), floor)
    keep = (t >= max(1.0, start_frac * t.max()))
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(t[keep]), np.log(g[keep]), 1)[0])


def slope_ci(t, curves, **kw) -> tuple[float, float, float]:
    """Per-seed log-log slopes of ``curves`` [seeds, points], then the bootstrap CI of their mean."""
    return mean_ci([loglog_slope(t, c, **kw) for c in np.asarray(curves)])


def checkpoints(iters: int, points: int = 60) -> np.ndarray:
    """Log-spaced iteration indices 0, 1, ..., iters (unique ints) for the stored curves."""
    if iters <= 0:
        return np.array([0])
    t = np.unique(np.round(np.logspace(0, math.log10(iters), points)).astype(int))
    return np.concatenate([[0], t[(t >= 1) & (t <= iters)]])


def fmt_ci(stat, digits: int = 3, *, sci: bool = True) -> str:
    m, lo, hi = stat
    if not np.isfinite(m):
        return "n/a"
    f = (lambda v: f"{v:.{digits - 1}e}") if sci else (lambda v: f"{v:.{digits}f}")
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        # 7 significant digits: far below every CI here, and it halves the committed file
        return float(f"{v:.7g}") if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path, data) -> Path:
    blob = json.dumps(_jsonable(data), indent=1, sort_keys=False).encode()
    return _atomic_write(Path(path), lambda f: f.write(blob))


def write_text(path, text: str) -> Path:
    return _atomic_write(Path(path), lambda f: f.write(text.encode()))


_STYLES = {"sppo": "--", "ipo": "-."}
_COLORS = {"inpo": "C0", "inpo_kl": "C9", "onpo": "C3", "dpo": "C2", "ipo": "C4", "sppo": "C1", "dno": "C5"}


def plot_gap_curves(path, panels: list[dict], *, title: str = "") -> Path | None:
    """Log-log duality gap vs iteration, one column per game, rows = average / last iterate; lines are
    the mean over seeds, bands the 95% bootstrap CI of the mean. ``panels``: dicts with ``game``,
    ``t`` and ``curves`` = {label: {"avg": [seeds, points], "last": [seeds, points]}}. Returns None
    (and writes nothing) without matplotlib."""

    mpl = _optional.optional("matplotlib")
    if mpl is None:
        return None
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(4.6 * cols, 7.4), squeeze=False, sharex=True)
    floor = 1e-9
    for j, panel in enumerate(panels):
        t = np.asarray(panel["t"], dtype=np.float64)
        keep = t >= 1
        for i, kind in enumerate(("avg", "last")):
            ax = axes[i, j]
            for label, by_kind in panel["curves"].items():
                stats = mean_ci_curves(np.asarray(by_kind[kind])[:, keep])
                color = _COLORS.get(label)  # variants ("inpo (…)") take the default colour cycle
                m, lo, hi = (np.maximum(s, floor) for s in stats)
                # SPPO's exact update is INPO's (τ = 0): dash it so the INPO curve beneath stays visible
                style = _STYLES.get(label, "-")
                (line,) = ax.plot(t[keep], m, style, label=label, color=color, lw=1.6 if style == "-" else 1.9)
                ax.fill_between(t[keep], lo, hi, color=line.get_color(), alpha=0.2, lw=0)
            # reference slopes through the plot's upper-left corner region
            tt = t[keep]
            ax.plot(tt, 0.5 * tt ** -0.5, "k:", lw=1, label="∝ T^-1/2" if (i, j) == (0, 0) else None)
            ax.plot(tt, 0.5 * tt ** -1.0, "k--", lw=1, label="∝ T^-1" if (i, j) == (0, 0) else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(bottom=floor * 10 if i == 1 else 1e-5, top=1.5)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{panel['game']}: {'average' if kind == 'avg' else 'last'} iterate", fontsize=10)
            if j == 0:
                ax.set_ylabel("duality gap")
            if i == 1:
                ax.set_xlabel("iteration T")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(len(labels), 4 if cols <= 2 else 8)  # long variant labels need room below narrow figures
    legend_rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.035 * legend_rows + 0.015, 1, 0.97 if title else 1))

    def save(f):
        fig.savefig(f, format="png", dpi=110)

    out = _atomic_write(Path(path), save)
    plt.close(fig)
    return out
