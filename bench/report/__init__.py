"""``python -m bench.report``: ``bench/results/*.jsonl`` → ``bench/REPORT.md`` with tables, targets and PNG plots.

Reads every ``*.jsonl`` under the results folder (``head-<gpu>.jsonl``, ``head-cpu.jsonl``, ``step-<dev>.jsonl``,
``iteration-<dev>.jsonl``, ``generation-<dev>.jsonl``): :mod:`bench.report.data`. Each table keeps the latest record
(by ``date``) per key and shows the device, commit and date it came from (:mod:`bench.report.markdown`). Targets are
judged only on GPU records of the full-size benches: met / not met / not yet measured (:mod:`bench.report.targets`).
Plots go to ``<results>/plots/`` and are linked from the report (:mod:`bench.report.plots`); without matplotlib the
report is written without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.lib.outputs import output_problem
from bench.report.data import load_results
from bench.report.markdown import render
from bench.report.plots import make_plots
from inpo.train.checkpoint import atomic_write_text


def build_report(results_dir: str | os.PathLike = "bench/results", out: str | os.PathLike = "bench/REPORT.md", *,
                 plots_dir: str | os.PathLike | None = None, plots: bool = True) -> Path:
    """Read the results, draw the plots (``<results>/plots`` by default), write the Markdown; returns its path."""
    results_dir, out = Path(results_dir), Path(out)
    res = load_results(results_dir)
    made = make_plots(res, Path(plots_dir) if plots_dir else results_dir / "plots") if plots else {}
    return atomic_write_text(out, render(res, out, made, results_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report",
                                 description="bench/REPORT.md from bench/results/*.jsonl")
    ap.add_argument("--results", default="bench/results", help="folder of *.jsonl results (default bench/results)")
    ap.add_argument("--out", default="bench/REPORT.md", help="Markdown file to write (default bench/REPORT.md)")
    ap.add_argument("--plots-dir", default=None, help="where PNGs go (default <results>/plots)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--smoke", action="store_true", help="accepted for symmetry with the other benches (no-op)")
    args = ap.parse_args(argv)
    if Path(args.results).exists() and not Path(args.results).is_dir():
        print(f"python -m bench.report: --results must be a folder of *.jsonl files, got file {args.results!r}", file=sys.stderr)
        return 2
    plots_dir = None if args.no_plots else args.plots_dir or Path(args.results) / "plots"
    problem = output_problem("python -m bench.report", files={"--out": args.out}, folders={"--plots-dir": plots_dir})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    path = build_report(args.results, args.out, plots_dir=args.plots_dir, plots=not args.no_plots)
    print(f"[bench report] wrote {path}")
    return 0
