"""The report's Markdown, table-driven: each table is a column list (header, field, kind) below, each section a
short function that picks its rows and prose; :func:`render` strings the sections together."""

from __future__ import annotations

import os
from pathlib import Path

from bench.report.data import (ITER_KEY, GEN_KEY, HEAD_KEY, PHASES, Results, cpu_compare_rows, head_family, is_gpu,
                               latest, step_rows)
from bench.report.fmt import Column, fmt, table
from bench.report.targets import cpu_targets, head_cpu_targets, head_targets, iteration_targets, step_targets


def _load_cell(load) -> str:
    if not load:
        return "—"
    xs = load if isinstance(load, list) else [load]
    return f"{min(xs):.1f}–{max(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def _ci_cell(mid: str, ci: str):
    """``median (lo–hi)`` from a median field and a ``[lo, hi]`` interval field."""
    return lambda r: (f"{fmt(r.get(mid))} ({fmt((r.get(ci) or [None])[0])}–"
                      f"{fmt((r.get(ci) or [None, None])[1])})")


def _quantile_cell(mid: str, prefix: str):
    """``median (p20–p80)`` from a median field and ``<prefix>_p20_ms`` / ``<prefix>_p80_ms``."""
    return lambda r: f"{fmt(r.get(mid))} ({fmt(r.get(f'{prefix}_p20_ms'))}–{fmt(r.get(f'{prefix}_p80_ms'))})"


def _model_cell(r: dict) -> str:
    return fmt(r.get("model")) + (" (smoke)" if r.get("smoke") else "")


LOAD: Column = ("load", "", lambda r: _load_cell(r.get("loadavg_1m")))
PROVENANCE: list[Column] = [("device", "device", ""), ("commit", "commit", ""), ("date (UTC)", "date", "date")]
TARGET_COLUMNS: list[Column] = [("target", "name", ""), ("status", "status", lambda r: f"**{r['status']}**"),
                                ("measured", "detail", "")]
CPU_STEP_COLUMNS: list[Column] = [
    ("system", "system", ""), ("model", "", _model_cell), ("seq ≤", "seq_len", ""),
    ("pairs/step", "pairs_per_step", ""), ("tokens/step", "tokens_per_step", ""),
    ("step ms (90% CI)", "", _ci_cell("step_median_ms", "step_ci90_ms")), ("tokens/s", "tokens_per_s", ""),
    ("vs TRL", "speedup_vs_trl", "x"), ("peak mem", "peak_mem_bytes", "bytes"), ("step mem", "step_mem_bytes", "bytes"),
    ("mem vs TRL", "mem_vs_trl", "x"), ("head", "impl", ""), ("threads", "torch_threads", ""), LOAD, *PROVENANCE]
GENERATION_COLUMNS: list[Column] = [
    ("sampler", "sampler", ""), ("model", "model", ""), ("rows", "rows", ""), ("new tokens", "new_tokens", ""),
    ("s (90% CI)", "", _ci_cell("median_s", "ci90_s")), ("tokens/s", "tokens_per_s", ""),
    ("vs HF", "speedup_vs_hf", "x"), ("engine start s", "engine_start_s", ""), ("first call s", "first_call_s", ""),
    ("distinct", "distinct_samples", ""), ("break-even rows", "break_even_rows", ""), LOAD, *PROVENANCE]
ITERATION_COLUMNS: list[Column] = [
    ("algorithm", "algorithm", ""), ("model", "", _model_cell), *[(f"{p} s", f"{p}_s", "") for p in PHASES],
    ("other s", "other_s", ""), ("total s", "total_s", ""), ("oracle queries", "oracle_queries", ""),
    ("pure fwd/bwd s", "pure_fwd_bwd_s", ""), ("overhead", "overhead_ratio", "x"),
    ("peak mem", "peak_mem_bytes", "bytes"), ("J/iteration", "energy_per_iteration_j", ""), *PROVENANCE]
HEAD_CPU_COLUMNS: list[Column] = [
    ("impl", "impl", ""), ("N", "N", ""), ("H", "H", ""), ("V", "V", ""),
    ("fwd+bwd ms (p20–p80)", "", _quantile_cell("fwd_bwd_ms", "fwd_bwd")), ("8NHV floor ms", "floor_8nhv_ms", ""),
    ("vs 8NHV floor", "floor_ratio", "x"), ("vs 6NHV floor", "floor_ratio_6nhv", "x"),
    ("peak GFLOP/s", "peak_gflop_s", ""), ("peak mem", "peak_mem_bytes", "bytes"), ("threads", "threads", ""), LOAD,
    *PROVENANCE]
HEAD_GPU_COLUMNS: list[Column] = [
    ("impl", "impl", ""), ("N", "N", ""), ("H", "H", ""), ("V", "V", ""), ("dtype", "dtype", ""),
    ("inputs", "inputs", ""), ("entropy", "entropy", ""), ("fwd+bwd ms", "fwd_bwd_ms", ""), ("floor ms", "floor_ms", ""),
    ("floor ratio", "floor_ratio", "x"), ("TFLOP/s", "tflops", ""), ("peak mem", "peak_mem_bytes", "bytes"),
    ("value err", "value_err", ""), *PROVENANCE]


def _step_columns(rows: list[dict]) -> list[Column]:
    """The step table's columns; ``vs TRL`` divides by the TRL record of the same device, model and length."""
    trl_tps = {(r.get("device"), r.get("model"), r.get("seq_len")): r.get("tokens_per_s")
               for r in rows if r.get("system") == "trl"}

    def vs_trl(r):
        t = trl_tps.get((r.get("device"), r.get("model"), r.get("seq_len")))
        return fmt(r["tokens_per_s"] / t, "x") if t and r.get("tokens_per_s") else "—"

    def oom(r):
        v = r.get("max_tokens_before_oom")
        return "—" if v is None else (fmt(v) if r.get("oom_reached") else f"≥ {fmt(v)}")

    return [("system", "system", ""), ("model", "", _model_cell), ("seq", "seq_len", ""),
            ("µbatch tok", "micro_batch_tokens", ""), ("step ms (p20–p80)", "", _quantile_cell("step_median_ms", "step")),
            ("tokens/s", "tokens_per_s", ""), ("vs TRL", "", vs_trl), ("MFU", "mfu", "pct"),
            ("peak mem", "peak_mem_bytes", "bytes"), ("max µbatch before OOM", "", oom),
            ("J/step", "energy_per_step_j", ""), *PROVENANCE]


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


class _Page:
    """The lines of the report and where it is written (image links are relative to it)."""

    def __init__(self, out_path: Path, plots: dict[str, Path]):
        self.base, self.plots, self.lines = out_path.parent, plots, []

    def add(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.lines += [p, ""]

    def images(self, *names_titles: tuple[str, str]) -> None:
        for name, title in names_titles:
            if name in self.plots:
                self.add(f"![{title}]({_rel(self.plots[name], self.base)})")


def _header(page: _Page, res: Results, results_dir: Path) -> None:
    page.lines += ["# Benchmark report", ""]
    page.add(f"Generated by `python -m bench.report` from `{_rel(results_dir, page.base)}/*.jsonl` ({len(res.files)} "
             "file(s)). Tables show the latest record per configuration; targets are judged on full-size GPU records "
             "only (CPU `--smoke` records just keep the benches alive).")
    if not any(is_gpu(r) for fam in res.families.values() for r in fam):
        page.add("> **No GPU results recorded yet.** Everything below comes from CPU runs (smoke modes or the CPU head "
                 "bench); on a GPU machine run `python -m bench.head`, `python -m bench.step`, `python -m bench.iteration`, then "
                 "`python -m bench.report`.")
    if res.problems:
        page.add("Problems while loading: " + "; ".join(res.problems))


def _targets(page: _Page, res: Results) -> None:
    gpu = head_targets(res.family("head")) + step_targets(res.family("step")) + iteration_targets(res.family("iteration"))
    page.lines += ["## Targets", ""]
    page.add(table([t.__dict__ for t in gpu], TARGET_COLUMNS), "CPU head (native C++ op) targets, from `head-cpu.jsonl`:",
             table([t.__dict__ for t in head_cpu_targets(res.family("head-cpu"))], TARGET_COLUMNS))


def _cpu_comparison(page: _Page, res: Results) -> None:
    page.lines += ["## Measured on CPU: inpo vs TRL, HF vs vLLM", ""]
    page.add("Side by side on this 2-core CPU, systems interleaved in every round (A, B, C, A, B, C, …), medians with "
             "bootstrap 90% intervals; the machine was shared with other jobs (load average per record), so absolute "
             "numbers are low and noisy, ratios from one run are what count.",
             table([t.__dict__ for t in cpu_targets(res.family("step"), res.family("iteration"),
                                                    res.family("generation"))], TARGET_COLUMNS))
    cmp_rows = cpu_compare_rows(res.family("step"))
    if cmp_rows:
        page.add("Training step (`python -m bench.step_cpu`): IPO, fp32, AdamW; tokens/s counts real (unpadded) tokens; "
                 "*peak mem* = fresh-process peak RSS over model + optimiser + two steps, *step mem* = the second step "
                 "alone.", table(cmp_rows, CPU_STEP_COLUMNS))
    gen_rows = latest(res.family("generation"), GEN_KEY)
    if gen_rows:
        page.add("Generation (`python -m bench.generation` in the vLLM venv): same fp32 policy, same "
                 "prompts, temperature 1 / top-p 1, eos ignored so every sample has the same length; one vLLM engine "
                 "for the run, per-prompt seeds.", table(gen_rows, GENERATION_COLUMNS))


def _step(page: _Page, res: Results) -> None:
    page.lines += ["## End-to-end training step", ""]
    rows = step_rows(res.family("step"))
    if rows:
        page.add("Micro-batch tokens = the main measurement's size; *max before OOM* = the largest micro-batch the "
                 "doubling sweep fitted (`≥` when the sweep limit, not memory, stopped it). MFU = (6·P·tokens + "
                 "6·L·d·Σs²) / step time / the board's dense bf16 datasheet peak, as the trainer logs it "
                 "(`inpo/utils/mfu.py`); a record without a datasheet peak (CPU) divides by the GEMM peak measured in "
                 "the same run (`mfu_peak_source`).",
                 table(rows, _step_columns(rows)))
    else:
        page.add("No step results recorded yet (`python -m bench.step`; `--smoke` on CPU).")
    page.images(("step_throughput_vs_batch", "throughput vs micro-batch"),
                ("step_memory_vs_batch", "memory vs micro-batch"), ("step_mfu", "MFU"))


def _iteration(page: _Page, res: Results) -> None:
    page.lines += ["## Online iteration cost", ""]
    rows = latest(res.family("iteration"), ITER_KEY)
    if rows:
        page.add("Wall time per phase of one online iteration and the oracle queries it made. *pure fwd/bwd* = the same "
                 "number of bare forward (precompute) and forward+backward (train) passes on the same micro-batches, "
                 "timed alone; *overhead* = (precompute + train) / pure fwd/bwd (target ≤ 1.3×); *other* = the rest "
                 "of the iteration (orchestration, packing, checkpointing).", table(rows, ITERATION_COLUMNS))
    else:
        page.add("No iteration results recorded yet (`python -m bench.iteration`; `--smoke` on CPU).")
    page.images(("iteration_phases", "iteration phases"))


HEAD_CPU_INTRO = ("fp32 forward+backward, impls interleaved in every round (median, p20–p80). *8NHV floor* = 8·N·H·V "
                  "FLOPs at the peak fp32 GEMM rate measured in the same run on a cache-resident GEMM (the best of all "
                  "rounds); *6NHV* the same for the useful work. `aten-gemms` (four materialised GEMMs) is a "
                  "reference, not a floor. *load* = 1-minute load average during the run (2 cores).")


def _head(page: _Page, res: Results) -> None:
    for fam, title in (("head", "Fused head microbench (GPU)"), ("head-cpu", "CPU head (native C++ op)")):
        page.lines += [f"## {title}", ""]
        rows = latest(head_family(res, fam), HEAD_KEY)
        if rows and fam == "head-cpu":
            page.add(HEAD_CPU_INTRO, table(rows, HEAD_CPU_COLUMNS))
        elif rows:
            page.add(table(rows, HEAD_GPU_COLUMNS))
        else:
            page.add(f"No `{fam}` results recorded yet." + (" (no GPU results recorded yet)" if fam == "head" else ""))
        page.images(*((name, name) for name in (f"{fam}_time_vs_shape", f"{fam}_floor_ratio")))


REPRODUCE = [
    "From the repository root (the benches are scripts in `bench/`, not installed with the package). On the GPU "
    "machine, install the optional baselines first (`pip install -e .[bench]`: trl, datasets, accelerate, "
    "liger-kernel, cut-cross-entropy; never a different torch); each bench skips a missing baseline with a message. On "
    "the lent offline device machine follow `bench/device/README.md`.", "",
    "```bash",
    "python -m bench.head          # GPU microbench of the fused head (exact default and the opt-in filter)",
    "python -m bench.head_cpu      # native CPU head vs the 8NHV/6NHV FLOP floor at the measured fp32 peak",
    "python -m bench.step_cpu      # CPU side by side: our step vs TRL DPOTrainer(ipo) vs the naive head",
    ".venv-vllm/bin/python -m bench.generation   # CPU: HF generate vs vLLM (the CPU vLLM venv)",
    "python -m bench.step          # end-to-end step vs TRL / naive head / Liger, with the OOM sweep",
    "python -m bench.step --systems inpo --no-sweep --trace runs/step-trace.json   # Chrome trace of one step",
    "python -m bench.iteration     # online iteration cost, INPO vs SPPO vs DNO-style",
    "python -m bench.report        # this file",
    "python -m bench.step --smoke; python -m bench.iteration --smoke   # CPU smoke modes (seconds)", "```", ""]


def _games_and_reproduce(page: _Page, results_dir: Path) -> None:
    games = results_dir / "games" / "report.md"
    page.lines += ["## Tabular games", ""]
    page.add(f"Duality-gap convergence of INPO, ONPO and the baselines on exact games: [{_rel(games, page.base)}]"
             f"({_rel(games, page.base)})." if games.exists() else
             "No games report yet (`make games` writes `bench/results/games/report.md`).")
    page.lines += ["## How to reproduce", "", *REPRODUCE]


def render(res: Results, out_path: Path, plots: dict[str, Path], results_dir: Path) -> str:
    """The whole report as Markdown (``plots``: {name: PNG path} from :func:`bench.report.plots.make_plots`)."""
    page = _Page(out_path, plots)
    _header(page, res, results_dir)
    _targets(page, res)
    _cpu_comparison(page, res)
    _step(page, res)
    _iteration(page, res)
    _head(page, res)
    _games_and_reproduce(page, results_dir)
    return "\n".join(page.lines)
