"""The report's PNG plots, one function per figure, drawn from whatever records exist; none without matplotlib.

Each PNG is written to a temp file and renamed, so a crash never leaves a truncated image.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.report.data import HEAD_KEY, ITER_KEY, PHASES, SWEEP_KEY, Results, head_family, is_gpu, latest, step_rows
from inpo._optional import optional


def _save(fig, path: Path) -> Path:
    """savefig to a temp file in the same folder, then rename: a crash never leaves a truncated PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _log_if_wide(ax, points: list[tuple[float, float]]) -> None:
    """Log axes only where the data spans more than a decade (short log axes get unreadable tick labels)."""
    for i, setter in ((0, ax.set_xscale), (1, ax.set_yscale)):
        vals = [p[i] for p in points if p[i] > 0]
        if vals and max(vals) / min(vals) > 20:
            setter("log")


class _Canvas:
    """Makes the figures of one report and remembers which PNGs it wrote."""

    def __init__(self, plt, plots_dir: Path):
        self.plt, self.plots_dir, self.made = plt, plots_dir, {}

    def new(self, title: str, xlabel: str, ylabel: str):
        fig, ax = self.plt.subplots(figsize=(7, 4.2))
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        return fig, ax

    def finish(self, fig, ax, name: str) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        self.made[name] = _save(fig, self.plots_dir / f"{name}.png")
        self.plt.close(fig)


def _head_time_vs_shape(c: _Canvas, fam: str, rows: list[dict]) -> None:
    fig, ax = c.new(f"{fam}: fwd+bwd time vs problem size", "6·N·H·V (GFLOP)", "fwd+bwd (ms)")
    series = defaultdict(list)
    for r in rows:
        if all(isinstance(r.get(k), (int, float)) for k in ("N", "H", "V")):
            series[(r.get("device"), r.get("impl"), r.get("inputs"))].append(
                (6 * r["N"] * r["H"] * r["V"] / 1e9, r["fwd_bwd_ms"]))
    multi_dev = len({k[0] for k in series}) > 1
    for (dev, impl, inputs), pts in sorted(series.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        label = f"{impl}" + (f" [{inputs}]" if inputs else "") + (f" ({dev})" if multi_dev else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    _log_if_wide(ax, [p for pts in series.values() for p in pts])
    c.finish(fig, ax, f"{fam}_time_vs_shape")


def _head_floor_ratio(c: _Canvas, fam: str, rows: list[dict]) -> None:
    ratio_rows = [r for r in rows if r.get("floor_ratio") is not None]
    if not ratio_rows:
        return
    fig, ax = c.new(f"{fam}: time / GEMM floor (1.0 = the floor)", "", "floor ratio")
    labels = [f"{r.get('impl')}\nN={r.get('N')} V={r.get('V')}" + (
        f"\n{r.get('inputs')}" if r.get("inputs") else "") for r in ratio_rows]
    ax.bar(range(len(ratio_rows)), [r["floor_ratio"] for r in ratio_rows], color="tab:blue")
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(range(len(ratio_rows)), labels, fontsize=6, rotation=60, ha="right")
    c.finish(fig, ax, f"{fam}_floor_ratio")


def _step_sweeps(c: _Canvas, res: Results) -> None:
    """Memory and throughput vs micro-batch tokens (the OOM sweep), one line per (device, system, model, length)."""
    sweeps = latest([r for r in res.family("step") if r.get("kind") == "sweep"], SWEEP_KEY)
    by = defaultdict(list)
    for r in sweeps:
        by[(r.get("device"), r.get("system"), r.get("model"), r.get("seq_len"))].append(r)
    multi_dev = len({k[0] for k in by}) > 1
    for metric, ylabel, name, scale in (("peak_mem_bytes", "peak memory (GiB)", "step_memory_vs_batch", 2**30),
                                        ("tokens_per_s", "tokens/s", "step_throughput_vs_batch", 1)):
        fig, ax = c.new(f"training step: {ylabel} vs micro-batch size", "micro-batch tokens", ylabel)
        for (dev, system, model, seq), pts in sorted(by.items(), key=lambda kv: str(kv[0])):
            pts = sorted((p["micro_batch_tokens"], p[metric] / scale) for p in pts if p.get(metric) is not None)
            if pts:
                label = f"{system} ({model}, s={seq})" + (f" {dev}" if multi_dev else "")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if ax.lines:
            ax.set_xscale("log", base=2)
            c.finish(fig, ax, name)
        else:
            c.plt.close(fig)


def _step_mfu(c: _Canvas, res: Results) -> None:
    steps = [r for r in step_rows(res.family("step")) if r.get("mfu") is not None]
    if not steps:
        return
    fig, ax = c.new("training step: MFU (model FLOPs / bf16 datasheet peak; CPU: measured GEMM peak)", "", "MFU (%)")
    labels = [f"{r.get('system')}\n{r.get('model')} s={r.get('seq_len')}\n{str(r.get('device'))[:18]}" for r in steps]
    colors = ["tab:green" if r.get("system") == "inpo" else "tab:gray" for r in steps]
    ax.bar(range(len(steps)), [100 * r["mfu"] for r in steps], color=colors)
    if any(is_gpu(r) for r in steps):
        ax.axhline(45, color="tab:red", ls="--", lw=1, label="target 45%")
    ax.set_xticks(range(len(steps)), labels, fontsize=7)
    c.finish(fig, ax, "step_mfu")


def _pure_train_end(r: dict) -> float | None:
    """Where the train segment would end if precompute + train cost only their pure fwd/bwd work."""
    if r.get("pure_fwd_bwd_s") is None:
        return None
    return float(r.get("generate_s") or 0.0) + float(r.get("rank_s") or 0.0) + r["pure_fwd_bwd_s"]


def _iteration_phases(c: _Canvas, res: Results) -> None:
    """Stacked phases per algorithm (latest per device/algorithm/model), with where train would end at pure
    fwd/bwd cost."""
    iters = [r for r in latest(res.family("iteration"), ITER_KEY) if any(r.get(f"{p}_s") is not None for p in PHASES)]
    if not iters:
        return
    fig, ax = c.new("online iteration: wall time per phase", "", "seconds per iteration")
    labels = [f"{r.get('algorithm')}\n{str(r.get('device'))[:18]}" for r in iters]
    bottom = [0.0] * len(iters)
    for p in (*PHASES, "other"):  # "other" on top: the bar's height is the whole iteration
        vals = [float(r.get(f"{p}_s") or 0.0) for r in iters]
        ax.bar(range(len(iters)), vals, bottom=bottom, label=p, **({"color": "lightgray"} if p == "other" else {}))
        bottom = [b + v for b, v in zip(bottom, vals)]
    floors = [(i, f) for i, f in enumerate(map(_pure_train_end, iters)) if f is not None]
    if floors:
        ax.scatter([i for i, _ in floors], [f for _, f in floors], marker="_", s=900, linewidths=2.5, color="k",
                   zorder=3, label="end of train with only pure fwd/bwd work")
    ax.set_xticks(range(len(iters)), labels, fontsize=7)
    c.finish(fig, ax, "iteration_phases")


def make_plots(res: Results, plots_dir: Path) -> dict[str, Path]:
    """PNG plots of whatever data exists; returns {name: path}. Empty without matplotlib."""
    mpl = optional("matplotlib", warn=False)
    if mpl is None:
        return {}
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    c = _Canvas(plt, plots_dir)
    for fam in ("head", "head-cpu"):
        rows = [r for r in latest(head_family(res, fam), HEAD_KEY) if r.get("fwd_bwd_ms")]
        if rows:
            _head_time_vs_shape(c, fam, rows)
            _head_floor_ratio(c, fam, rows)
    if any(r.get("kind") == "sweep" for r in res.family("step")):
        _step_sweeps(c, res)
    _step_mfu(c, res)
    _iteration_phases(c, res)
    return c.made
