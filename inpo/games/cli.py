"""``inpo game``: duality gap of INPO, ONPO and baselines on one tabular game, over seeds.

    inpo game --game rps --algos inpo,onpo,dpo,ipo,sppo --iters 1000 --seeds 20 --out DIR

writes ``DIR/results.json``, ``DIR/gap_vs_iteration.png`` (log-log, average and last iterate, 95% CI
bands over seeds) and ``DIR/report.md`` (gap at T and fitted log-log slopes with CIs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from inpo.paths import check_writable_path
from inpo.utils.record import environment_info

from .core import GAMES
from .report import fmt_ci, md_table, plot_gap_curves, write_json, write_text
from .solvers import ALGORITHMS, MODES, SCHEDULES
from .sweep import convergence, make_specs, summarize


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="inpo game", description=__doc__.split("\n")[0])
    ap.add_argument("--game", default="rps", choices=GAMES, help="which game (default rps)")
    ap.add_argument("--algos", default="inpo,onpo,dpo,ipo,sppo",
                    help=f"comma list of {', '.join(ALGORITHMS)}, inpo_kl (INPO with τ = ratio·η)")
    ap.add_argument("--iters", type=int, default=1000, help="iterations T (default 1000)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds: each draws the game and π_0 = π_ref (default 20)")
    ap.add_argument("--n", type=int, default=10, help="responses for random / bt / cyclic / mixture (default 10)")
    ap.add_argument("--contexts", type=int, default=None, help="one game per prompt: C independent games")
    ap.add_argument("--step", type=float, default=0.5,
                    help="common mirror-descent step: η = 1/step for INPO/SPPO (β for DPO/IPO/DNO), η = step for ONPO")
    ap.add_argument("--tau-ratio", type=float, default=1.0 / 3.0, help="τ/η of inpo_kl (default 1/3)")
    ap.add_argument("--schedule", default="constant", choices=SCHEDULES, help="step schedule (sqrt: step ∝ 1/√t)")
    ap.add_argument("--mode", default="closed_form", choices=MODES,
                    help="closed_form (exact, fast), loss (population-loss minimisation), sampled (finite samples)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    return ap


def _memory_estimate(args) -> int:
    """Bytes the sweep holds at once (float64): the game ([C,] n, n) with the working copies a mixture needs,
    and every iterate of one trajectory (T+1 policies over [C,] n)."""
    n = 3 if args.game == "rps" else args.n
    c = args.contexts or 1
    return 8 * c * (3 * n * n + 2 * (args.iters + 1) * n)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    for name, low in (("iters", 1), ("seeds", 1), ("n", 2)):
        if getattr(args, name) < low:
            ap.error(f"--{name} must be an int >= {low}, got {getattr(args, name)}")
    if args.contexts is not None and args.contexts < 1:
        ap.error(f"--contexts must be an int >= 1 (one game per prompt), got {args.contexts}")
    if not (math.isfinite(args.step) and args.step > 0):
        ap.error(f"--step must be > 0 and finite, got {args.step}")
    if not 0 <= args.tau_ratio <= 1:
        ap.error(f"--tau-ratio must be in [0, 1], got {args.tau_ratio}")
    try:
        check_writable_path(args.out, "--out", folder=True)
    except ValueError as exc:
        ap.error(str(exc))
    need, have = _memory_estimate(args), _available_memory()
    if have is not None and need > 0.8 * have:
        ap.error(f"--game {args.game} --n {args.n}{f' --contexts {args.contexts}' if args.contexts else ''} --iters "
                 f"{args.iters} needs about {need / 2**30:.1f} GiB (the n x n game matrix and the iterates), more "
                 f"than 80% of the {have / 2**30:.1f} GiB available; lower --n, --contexts or --iters")
    try:
        specs = make_specs([a for a in args.algos.split(",") if a.strip()], step=args.step,
                           tau_ratio=args.tau_ratio, schedule=args.schedule)
    except ValueError as exc:
        ap.error(str(exc))
    if not specs:
        ap.error("--algos is empty")

    t0 = time.perf_counter()
    conv = convergence(args.game, specs, iters=args.iters, seeds=args.seeds, n=args.n, contexts=args.contexts,
                       mode=args.mode)
    conv["summary"] = summarize(conv)
    runtime = time.perf_counter() - t0
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_json(args.out / "results.json", {"env": environment_info(), "args": cfg, "runtime_s": runtime, **conv})
    png = plot_gap_curves(args.out / "gap_vs_iteration.png", [{"game": args.game, "t": conv["t"], "curves": conv["curves"]}],
                          title=f"{args.game}: mean over {args.seeds} seeds, 95% CI")
    rows = [[r["label"], fmt_ci(r["avg_gap_T"]), fmt_ci(r["avg_slope"], sci=False, digits=2), fmt_ci(r["last_gap_T"]),
             fmt_ci(r["last_slope"], sci=False, digits=2)] for r in conv["summary"]]
    lines = [f"# `inpo game --game {args.game}`", "",
             f"T = {args.iters}, {args.seeds} seeds, n = {args.n if args.game not in ('rps',) else 3}, mode {args.mode}, "
             f"step {args.step} ({args.schedule}): η = {1 / args.step:g} for INPO/SPPO (β for DPO/IPO/DNO; INPO divides: "
             f"target 1/(2η), exp(r/η)), η = {args.step:g} for ONPO (multiplies: target η/2, exp(η·r)); inpo_kl has "
             f"τ = {args.tau_ratio:.3g}·η. π_0 = π_ref ~ Dirichlet(1) per seed. Gap at T and the log-log slope over "
             f"t ∈ [T/10, T]: mean [95% bootstrap CI] over seeds. {runtime:.1f} s.", "",
             md_table(["algorithm", "avg-iterate gap at T", "slope (avg)", "last-iterate gap at T", "slope (last)"], rows), ""]
    if png is not None:
        lines += ["![duality gap](gap_vs_iteration.png)", ""]
    write_text(args.out / "report.md", "\n".join(lines))
    print(f"inpo game: wrote {args.out}/results.json, report.md{', gap_vs_iteration.png' if png else ''} "
          f"({runtime:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
