"""``inpo bench report``: turn ``bench/results/*.jsonl`` into ``bench/REPORT.md`` with tables, targets and PNG plots.

Reads every ``*.jsonl`` under the results folder (``head-<gpu>.jsonl``, ``head-cpu.jsonl``, ``step-<dev>.jsonl``,
``iteration-<dev>.jsonl``); unreadable lines are counted and reported, never fatal. Each table keeps the latest record
(by ``date``) per key and shows the device, commit and date it came from. Targets are judged only on GPU records of
the full-size benches (CPU smoke records keep the code alive, they do not measure the product): met / not met / not
yet measured. Plots go to ``<results>/plots/`` and are linked from the report; without matplotlib the report is
written without them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from inpo._optional import optional

HEAD_KEY = ("device", "impl", "N", "H", "V", "dtype", "inputs")
STEP_KEY = ("device", "system", "model", "seq_len")
SWEEP_KEY = ("device", "system", "model", "seq_len", "micro_batch_tokens")
ITER_KEY = ("device", "algorithm", "model")
PHASES = ("generate", "rank", "precompute", "train")
MET, NOT_MET, NOT_YET = "met", "not met", "not yet measured"


@dataclass
class Results:
    """Records by family (``head``, ``head-cpu``, ``step``, ``iteration``, ``other``) and problems seen loading."""

    families: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def family_of(path: Path) -> str:
    stem = path.stem
    if stem == "head-cpu":
        return "head-cpu"
    for fam in ("head", "step", "iteration", "generation"):
        if stem.startswith(fam + "-") or stem == fam:
            return fam
    return "other"


def load_results(results_dir: str | os.PathLike) -> Results:
    """Read every ``*.jsonl`` directly under ``results_dir`` (a missing folder is an empty result)."""
    res = Results()
    root = Path(results_dir)
    if not root.is_dir():
        res.problems.append(f"results folder {str(root)!r} does not exist")
        return res
    for path in sorted(root.glob("*.jsonl")):
        res.files.append(path)
        fam = family_of(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            res.problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
            continue
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                res.families[fam].append(_normalise(rec))
            else:
                bad += 1
        if bad:
            res.problems.append(f"{path.name}: skipped {bad} malformed line(s)")
    return res


def _normalise(rec: dict) -> dict:
    """Head benches name the shape ``N/H/V`` (GPU) or ``n/h/v`` (CPU): the report reads the upper-case keys."""
    for k in ("N", "H", "V"):
        if k not in rec and k.lower() in rec:
            rec[k] = rec[k.lower()]
    return rec


def is_gpu(rec: dict) -> bool:
    dev = str(rec.get("device") or "")
    return bool(dev) and not dev.lower().startswith("cpu")


def latest(records: Iterable[dict], key: tuple[str, ...]) -> list[dict]:
    """The newest record (ISO ``date``, later lines win ties) per key, in first-seen key order."""
    best: dict[tuple, dict] = {}
    for rec in records:
        k = tuple(_hashable(rec.get(f)) for f in key)
        if k not in best or str(rec.get("date") or "") >= str(best[k].get("date") or ""):
            best[k] = rec
    return list(best.values())


def _hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


# ---- formatting ----------------------------------------------------------------------------------------------

def fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if kind == "bytes":
        return f"{v / 2**30:.2f} GiB" if v >= 2**28 else f"{v / 2**20:.1f} MiB"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "x":
        return f"{v:.2f}×"
    if kind == "date":
        return str(v)[:16].replace("T", " ")
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def table(rows: list[dict], columns: list[tuple[str, str, str | Callable[[dict], str]]]) -> str:
    """Markdown table; ``columns`` = (header, field, kind) where kind is a ``fmt`` kind or a function of the row."""
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = [c[2](r) if callable(c[2]) else fmt(r.get(c[1]), c[2]) for c in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def _model_cell(r: dict) -> str:
    return fmt(r.get("model")) + (" (smoke)" if r.get("smoke") else "")


PROVENANCE = [("device", "device", ""), ("commit", "commit", ""), ("date (UTC)", "date", "date")]


# ---- targets -------------------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    status: str
    detail: str


def _full_size_steps(steps: list[dict]) -> list[dict]:
    return [r for r in latest([r for r in steps if r.get("kind", "step") == "step"], STEP_KEY)
            if is_gpu(r) and not r.get("smoke") and r.get("model") == "llama-3.2-1b"]


def _by_device(recs: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in recs:
        out[str(r.get("device"))][str(r.get("system"))] = r
    return out


def step_targets(steps: list[dict]) -> list[Target]:
    full = [r for r in _full_size_steps(steps) if r.get("seq_len") == 2048]
    per_dev = _by_device(full)
    targets = []

    # 1. tokens/s vs TRL, same device (and, for "one run", the same commit).
    pairs = [(dev, s["inpo"], s["trl"]) for dev, s in per_dev.items() if "inpo" in s and "trl" in s]
    if pairs:
        dev, ours, trl = pairs[-1]
        ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
        targets.append(Target("INPO step ≥ 2× TRL DPOTrainer(ipo) tokens/s", MET if ratio >= 2 else NOT_MET,
                              f"{ratio:.2f}× on {dev} ({fmt(ours['tokens_per_s'])} vs {fmt(trl['tokens_per_s'])} tok/s)"))
    else:
        targets.append(Target("INPO step ≥ 2× TRL DPOTrainer(ipo) tokens/s", NOT_YET,
                              "needs inpo and trl step records at seq_len 2048 on one GPU"))
    # 2. MFU.
    ours_all = [s["inpo"] for s in per_dev.values() if "inpo" in s and s["inpo"].get("mfu") is not None]
    if ours_all:
        r = ours_all[-1]
        targets.append(Target("MFU ≥ 45% at 2048 tokens/sequence", MET if r["mfu"] >= 0.45 else NOT_MET,
                              f"{fmt(r['mfu'], 'pct')} on {r['device']} (peak {fmt(r.get('peak_tflops'))} TFLOP/s "
                              f"measured by a {r.get('gemm_dtype', 'bf16')} GEMM in the same run)"))
    else:
        targets.append(Target("MFU ≥ 45% at 2048 tokens/sequence", NOT_YET, "needs an inpo step record on a GPU"))
    # 3. Largest micro-batch.
    name = "largest micro-batch before OOM ≥ 4× TRL's"
    if pairs:
        dev, ours, trl = pairs[-1]
        a, b = ours.get("max_tokens_before_oom"), trl.get("max_tokens_before_oom")
        if a and b:
            ratio = a / b
            if not trl.get("oom_reached"):  # TRL's ceiling was the sweep limit: no capacity ratio to judge
                status, note = NOT_YET, " (TRL never hit OOM: raise --sweep-limit-tokens)"
            elif ratio >= 4:  # a lower bound on ours when our sweep stopped at the limit
                status, note = MET, "" if ours.get("oom_reached") else " (ours: ≥, the sweep limit stopped it)"
            elif not ours.get("oom_reached"):
                status, note = NOT_YET, " (ours never hit OOM: raise --sweep-limit-tokens)"
            else:
                status, note = NOT_MET, ""
            targets.append(Target(name, status, f"{ratio:.2f}× on {dev} ({fmt(a)} vs {fmt(b)} tokens){note}"))
        else:
            targets.append(Target(name, NOT_YET, "the step records carry no sweep result (run without --no-sweep)"))
    else:
        targets.append(Target(name, NOT_YET, "needs inpo and trl sweeps on one GPU"))
    return targets


def iteration_targets(iters: list[dict]) -> list[Target]:
    name = "online iteration: precompute + train ≤ 1.3× pure forward/backward"
    recs = [r for r in latest(iters, ITER_KEY) if is_gpu(r) and not r.get("smoke")
            and str(r.get("algorithm", "")).lower() == "inpo" and r.get("overhead_ratio") is not None]
    if not recs:
        return [Target(name, NOT_YET, "needs a GPU iteration record for INPO")]
    r = recs[-1]
    ratio = r["overhead_ratio"]
    return [Target(name, MET if ratio <= 1.3 else NOT_MET, f"{ratio:.2f}× on {r['device']}")]


# The exact head's GPU targets (H100/H200 bf16, N=16384 H=2048 V=128256, peaked inputs); the floor is the
# head bench's 6NHV floor (its three GEMMs at the bf16 rate measured in the same run).
HEAD_TARGET_SHAPE = (16384, 2048, 128256)
HEAD_TARGET_INPUTS = "peaked"
EXACT_FLOOR_TARGET, FILTER_FLOOR_TARGET = 1.4, 1.2
FILTER_VS_CCE, EXACT_VS_LIGER = 1.2, 4.0
EXACT = ("inpo-triton", "inpo-triton-chunked")  # exact backwards (grad_filter=None), when the record says exact
FILTERED = ("inpo-triton-filter",)
HEAD_TARGET_NAMES = {
    "exact_floor": f"exact backward: fwd+bwd ≤ {EXACT_FLOOR_TARGET}× the 6NHV floor",
    "exact_cce": "exact backward no slower than CCE (its default filter)",
    "filter_floor": f"opt-in filter: fwd+bwd ≤ {FILTER_FLOOR_TARGET}× the 6NHV floor",
    "filter_cce": f"opt-in filter ≥ {FILTER_VS_CCE}× faster than CCE",
    "liger": f"exact head ≥ {EXACT_VS_LIGER:g}× faster than Liger",
    "mem": "exact head extra memory ≤ CCE's",
    "value": "every timed impl matches the fp32 reference",
}


def head_targets(recs: list[dict]) -> list[Target]:
    """The GPU head targets on the latest bf16 records at N=16384 H=2048 V=128256 with peaked inputs, per device.
    "Exact" is the faster of the exact Triton backwards (atomic, chunked) whose record says ``exact``; "filter" is
    the opt-in filter (``inpo-triton-filter``). A record whose forward disagreed with the fp32 reference
    (``value_ok`` False) cannot meet anything."""
    rows = [r for r in latest(recs, HEAD_KEY) if is_gpu(r) and r.get("dtype") == "bf16" and not r.get("smoke")
            and (r.get("N"), r.get("H"), r.get("V")) == HEAD_TARGET_SHAPE and r.get("inputs") == HEAD_TARGET_INPUTS]
    by_dev: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_dev[str(r["device"])][str(r.get("impl"))] = r
    verdicts: dict[str, list[tuple[bool, str]]] = defaultdict(list)
    checked: list[tuple[bool, float, str]] = []

    def fastest(by: dict, impls: tuple[str, ...], exact: bool) -> dict | None:
        ok = [by[m] for m in impls if m in by and by[m].get("fwd_bwd_ms") and by[m].get("value_ok") is not False
              and (not exact or by[m].get("exact") is True)]
        return min(ok, key=lambda r: r["fwd_bwd_ms"]) if ok else None

    for dev, by in by_dev.items():
        where = "{}×{}×{} {} on {}".format(*HEAD_TARGET_SHAPE, HEAD_TARGET_INPUTS, dev)
        for impl, r in by.items():
            if r.get("value_ok") is not None:
                checked.append((bool(r["value_ok"]), float(r.get("value_err") or 0.0), f"{impl} at {where}"))
        cce, liger = by.get("cce"), by.get("liger")
        exact, filt = fastest(by, EXACT, True), fastest(by, FILTERED, False)
        for key, ours, need in (("exact_floor", exact, EXACT_FLOOR_TARGET), ("filter_floor", filt, FILTER_FLOOR_TARGET)):
            if ours is not None and ours.get("floor_ratio") is not None:
                verdicts[key].append((ours["floor_ratio"] <= need, f"{ours['floor_ratio']:.2f}× ({ours['impl']} at "
                                                                   f"{where})"))
        for key, ours, base, need in (("exact_cce", exact, cce, 1.0), ("filter_cce", filt, cce, FILTER_VS_CCE),
                                      ("liger", exact, liger, EXACT_VS_LIGER)):
            if ours is not None and base and base.get("fwd_bwd_ms"):
                sp = base["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
                verdicts[key].append((sp >= need, f"{sp:.2f}× ({ours['impl']} at {where})"))
        if exact is not None and cce and cce.get("peak_mem_bytes") and exact.get("peak_mem_bytes") is not None:
            verdicts["mem"].append((exact["peak_mem_bytes"] <= cce["peak_mem_bytes"],
                                    f"{fmt(exact['peak_mem_bytes'], 'bytes')} vs {fmt(cce['peak_mem_bytes'], 'bytes')} "
                                    f"({exact['impl']} at {where})"))
    if checked:
        bad = [f"✗ {w} (error {e:.2e})" for ok, e, w in checked if not ok]
        verdicts["value"] = [(not bad, "; ".join(bad) if bad else
                              f"{len(checked)} records, max relative error {max(e for _, e, _ in checked):.1e}")]
    need_cmd = "needs bf16 H100/H200 head records at {}×{}×{} peaked (`inpo bench head`)".format(*HEAD_TARGET_SHAPE)
    out = []
    for key, name in HEAD_TARGET_NAMES.items():
        got = verdicts.get(key)
        if not got:
            extra = {"exact_cce": " with CCE installed", "filter_cce": " with CCE installed and the opt-in filter",
                     "filter_floor": " with the opt-in filter (`grad_filter`)", "liger": " with Liger installed",
                     "mem": " with CCE installed"}.get(key, "")
            out.append(Target(name, NOT_YET, need_cmd + extra))
            continue
        status = MET if all(ok for ok, _ in got) else NOT_MET
        out.append(Target(name, status, "; ".join(("" if ok else "✗ ") + d for ok, d in got)))
    return out


HEAD_CPU_FLOOR_TARGET = 1.25  # native fwd+bwd / (8·N·H·V FLOPs at the fp32 GEMM peak measured in the same run)


def head_cpu_records(recs: list[dict]) -> list[dict]:
    """The head-cpu records that count: those with a FLOP floor (``floor_kind``) when any exist. Older runs called
    four materialised ATen GEMMs the floor (impl ``gemm-floor``), which the native head beats, so they are dropped
    once a run with the measured-peak floor exists."""
    new = [r for r in recs if r.get("floor_kind")]
    return new or list(recs)


def head_cpu_targets(recs: list[dict]) -> list[Target]:
    """The native CPU head's targets, on the latest head-cpu records per shape: fwd+bwd ≤ 1.25× the 8NHV FLOP
    floor at the peak measured in the same run, ≥ 1.15× faster than impl=torch, ≤ 1/10 of naive's peak memory."""
    rows = latest(head_cpu_records(recs), HEAD_KEY)
    mem = {((r.get("N"), r.get("H"), r.get("V")), str(r.get("impl"))): r
           for r in latest([r for r in head_cpu_records(recs) if r.get("peak_mem_bytes") is not None
                            and not r.get("smoke")], HEAD_KEY)}
    shapes: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("smoke"):
            continue
        shapes[(r.get("N"), r.get("H"), r.get("V"))][str(r.get("impl"))] = r
    out = []
    names = (f"native fwd+bwd ≤ {HEAD_CPU_FLOOR_TARGET}× the 8NHV floor (FLOPs at the fp32 GEMM peak measured in the "
             "same run)", "native ≥ 1.15× faster than impl=torch", "native peak memory ≤ 1/10 of naive's")
    if not any("inpo-native" in s for s in shapes.values()):
        return [Target(n, NOT_YET, "needs head-cpu records with impl inpo-native") for n in names]
    for shape, s in shapes.items():
        nat = s.get("inpo-native")
        if nat is None:
            continue
        where = f"N={shape[0]} H={shape[1]} V={shape[2]}"
        if nat.get("floor_kind") and nat.get("floor_ratio") is not None:
            fr = nat["floor_ratio"]
            detail = (f"{fr:.2f}× the 8NHV floor ({fmt(nat.get('floor_ratio_6nhv'), 'x')} the 6NHV floor; peak "
                      f"{fmt(nat.get('peak_gflop_s'))} GFLOP/s) at {where}")
            if fr < 1.0:  # nothing beats a true floor: the GEMM peak was measured too low (load, small GEMMs)
                out.append(Target(names[0], NOT_YET, f"invalid peak: the native head ran {1 / fr:.2f}× faster than "
                                                     f"its 'floor' ({detail}); re-run on a quieter machine"))
            else:
                out.append(Target(names[0], MET if fr <= HEAD_CPU_FLOOR_TARGET else NOT_MET, detail))
        else:
            out.append(Target(names[0], NOT_YET, f"the record at {where} predates the measured-peak floor "
                                                 "(`inpo bench head-cpu` again)"))
        t = s.get("torch")
        if t and t.get("fwd_bwd_ms") and nat.get("fwd_bwd_ms"):
            sp = t["fwd_bwd_ms"] / nat["fwd_bwd_ms"]
            out.append(Target(names[1], MET if sp >= 1.15 else NOT_MET, f"{sp:.2f}× at {where}"))
        # Memory from the latest records that measured it (a timing-only re-run, --mem off, carries none).
        nat_m, nv_m = (mem.get((shape, impl)) for impl in ("inpo-native", "naive"))
        if nv_m and nat_m and nv_m.get("peak_mem_bytes"):
            frac = nat_m["peak_mem_bytes"] / nv_m["peak_mem_bytes"]
            when = "" if nat_m is nat else f" (run of {fmt(nat_m.get('date'), 'date')})"
            out.append(Target(names[2], MET if frac <= 0.1 else NOT_MET, f"{frac:.3f} of naive at {where}{when}"))
    return out


# ---- measured on CPU: inpo vs TRL, HF vs vLLM (issue 14 §5) ---------------------------------------------------

CPU_STEP_SPEEDUP, CPU_STEP_MEM, CPU_OVERHEAD = 1.5, 0.5, 1.3


def cpu_compare_rows(steps: list[dict]) -> list[dict]:
    """Latest interleaved CPU step-comparison records (``kind="cpu-compare"``), full runs first, smoke after."""
    rows = latest([r for r in steps if r.get("kind") == "cpu-compare"], STEP_KEY + ("smoke",))
    return sorted(rows, key=lambda r: bool(r.get("smoke")))


def cpu_targets(steps: list[dict], iters: list[dict], gens: list[dict]) -> list[Target]:
    """The CPU side-by-side targets: our step ≥ 1.5× TRL's tokens/s at ≤ ½ its peak memory (latest non-smoke
    cpu-compare records of one run), the online iteration's (precompute + train) / pure fwd/bwd ≤ 1.3× per
    algorithm (latest non-smoke CPU iteration records), and which sampler generated faster (the default)."""
    out = []
    name = f"CPU step ≥ {CPU_STEP_SPEEDUP}× TRL DPOTrainer(ipo) tokens/s"
    name_mem = f"CPU step peak memory ≤ {CPU_STEP_MEM:g}× TRL's"
    by = {r.get("system"): r for r in cpu_compare_rows(steps) if not r.get("smoke")}
    ours, trl = by.get("inpo"), by.get("trl")
    if ours and trl and ours.get("commit") == trl.get("commit") and trl.get("tokens_per_s"):
        sp = ours["tokens_per_s"] / trl["tokens_per_s"]
        lo = ours["tokens_per_s_ci90"][0] / trl["tokens_per_s_ci90"][1] if ours.get("tokens_per_s_ci90") and trl.get(
            "tokens_per_s_ci90") else None
        hi = ours["tokens_per_s_ci90"][1] / trl["tokens_per_s_ci90"][0] if lo is not None else None
        ci = f", conservative 90% range {lo:.2f}–{hi:.2f}×" if lo is not None else ""
        out.append(Target(name, MET if sp >= CPU_STEP_SPEEDUP else NOT_MET,
                          f"{sp:.2f}× ({fmt(ours['tokens_per_s'])} vs {fmt(trl['tokens_per_s'])} tok/s{ci}; "
                          f"{ours.get('model')}, ≤{ours.get('seq_len')}-token variable pairs)"))
        if ours.get("peak_mem_bytes") and trl.get("peak_mem_bytes"):
            m = ours["peak_mem_bytes"] / trl["peak_mem_bytes"]
            step_m = (f"; step-only {fmt(ours.get('step_mem_bytes'), 'bytes')} vs "
                      f"{fmt(trl.get('step_mem_bytes'), 'bytes')}" if ours.get("step_mem_bytes") else "")
            out.append(Target(name_mem, MET if m <= CPU_STEP_MEM else NOT_MET,
                              f"{m:.2f}× ({fmt(ours['peak_mem_bytes'], 'bytes')} vs "
                              f"{fmt(trl['peak_mem_bytes'], 'bytes')} fresh-process peak{step_m})"))
        else:
            out.append(Target(name_mem, NOT_YET, "the records carry no peak memory (run without --no-mem)"))
    else:
        out += [Target(n, NOT_YET, "needs inpo and trl records of one `inpo bench step-cpu` run")
                for n in (name, name_mem)]
    cpu_iters = [r for r in latest(iters, ITER_KEY) if not is_gpu(r) and not r.get("smoke")
                 and r.get("overhead_ratio") is not None]
    if cpu_iters:
        for r in cpu_iters:
            ratio = r["overhead_ratio"]
            out.append(Target(f"CPU online iteration ({r.get('algorithm')}): precompute + train ≤ {CPU_OVERHEAD}× "
                              "pure fwd/bwd", MET if ratio <= CPU_OVERHEAD else NOT_MET,
                              f"{ratio:.2f}× ({fmt(r.get('precompute_s'))} + {fmt(r.get('train_s'))} s vs "
                              f"{fmt(r.get('pure_fwd_bwd_s'))} s; {r.get('model')})"))
    else:
        out.append(Target(f"CPU online iteration: precompute + train ≤ {CPU_OVERHEAD}× pure fwd/bwd", NOT_YET,
                          "needs a non-smoke CPU `inpo bench iteration` record"))
    g = {r.get("sampler"): r for r in latest(gens, ("device", "sampler", "model")) if not is_gpu(r)}
    name = "default sampler = the faster one on this CPU (`sampler: auto`)"
    if "hf" in g and "vllm" in g:
        fast = max(("hf", "vllm"), key=lambda s: g[s]["tokens_per_s"])
        be = g["vllm"].get("break_even_rows")
        out.append(Target(name, "measured", f"{fast} is faster: vLLM {fmt(g['vllm']['tokens_per_s'])} vs HF "
                                             f"{fmt(g['hf']['tokens_per_s'])} tok/s steady state; vLLM engine start "
                                             f"{fmt(g['vllm'].get('engine_start_s'))} s"
                                             + (f", paid back after {be:,.0f} sampled rows" if be else "")))
    else:
        out.append(Target(name, NOT_YET, "needs hf and vllm records of one `inpo bench generation` run (vLLM venv)"))
    return out


# ---- plots ---------------------------------------------------------------------------------------------------

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


def make_plots(res: Results, plots_dir: Path) -> dict[str, Path]:
    """PNG plots of whatever data exists; returns {name: path}. Empty without matplotlib."""
    mpl = optional("matplotlib", warn=False)
    if mpl is None:
        return {}
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, Path] = {}

    def new(title: str, xlabel: str, ylabel: str):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        return fig, ax

    def finish(fig, ax, name: str):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        made[name] = _save(fig, plots_dir / f"{name}.png")
        plt.close(fig)

    # Head: time vs shape (6NHV) and floor ratio, per (device, impl).
    for fam in ("head", "head-cpu"):
        rows = [r for r in latest(_head_family(res, fam), HEAD_KEY) if r.get("fwd_bwd_ms")]
        if not rows:
            continue
        fig, ax = new(f"{fam}: fwd+bwd time vs problem size", "6·N·H·V (GFLOP)", "fwd+bwd (ms)")
        series = defaultdict(list)
        for r in rows:
            if all(isinstance(r.get(k), (int, float)) for k in ("N", "H", "V")):
                series[(r.get("device"), r.get("impl"), r.get("inputs"))].append(
                    (6 * r["N"] * r["H"] * r["V"] / 1e9, r["fwd_bwd_ms"]))
        for (dev, impl, inputs), pts in sorted(series.items(), key=lambda kv: str(kv[0])):
            pts.sort()
            label = f"{impl}" + (f" [{inputs}]" if inputs else "") + (f" ({dev})" if len(
                {k[0] for k in series}) > 1 else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        _log_if_wide(ax, [p for pts in series.values() for p in pts])
        finish(fig, ax, f"{fam}_time_vs_shape")
        ratio_rows = [r for r in rows if r.get("floor_ratio") is not None]
        if ratio_rows:
            fig, ax = new(f"{fam}: time / GEMM floor (1.0 = the floor)", "", "floor ratio")
            labels = [f"{r.get('impl')}\nN={r.get('N')} V={r.get('V')}" + (
                f"\n{r.get('inputs')}" if r.get("inputs") else "") for r in ratio_rows]
            ax.bar(range(len(ratio_rows)), [r["floor_ratio"] for r in ratio_rows], color="tab:blue")
            ax.axhline(1.0, color="k", lw=1)
            ax.set_xticks(range(len(ratio_rows)), labels, fontsize=6, rotation=60, ha="right")
            finish(fig, ax, f"{fam}_floor_ratio")

    # Step: memory and throughput vs micro-batch tokens (the sweep), MFU per system.
    sweeps = latest([r for r in res.families.get("step", []) if r.get("kind") == "sweep"], SWEEP_KEY)
    if sweeps:
        by = defaultdict(list)
        for r in sweeps:
            by[(r.get("device"), r.get("system"), r.get("model"), r.get("seq_len"))].append(r)
        multi_dev = len({k[0] for k in by}) > 1
        for metric, ylabel, name, scale in (("peak_mem_bytes", "peak memory (GiB)", "step_memory_vs_batch", 2**30),
                                            ("tokens_per_s", "tokens/s", "step_throughput_vs_batch", 1)):
            fig, ax = new(f"training step: {ylabel} vs micro-batch size", "micro-batch tokens", ylabel)
            for (dev, system, model, seq), pts in sorted(by.items(), key=lambda kv: str(kv[0])):
                pts = sorted((p["micro_batch_tokens"], p[metric] / scale) for p in pts if p.get(metric) is not None)
                if pts:
                    label = f"{system} ({model}, s={seq})" + (f" {dev}" if multi_dev else "")
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            if ax.lines:
                ax.set_xscale("log", base=2)
                finish(fig, ax, name)
            else:
                plt.close(fig)
    steps = [r for r in latest([r for r in res.families.get("step", []) if r.get("kind", "step") == "step"],
                               STEP_KEY) if r.get("mfu") is not None]
    if steps:
        fig, ax = new("training step: MFU (model FLOPs / GEMM peak measured in the same run)", "", "MFU (%)")
        labels = [f"{r.get('system')}\n{r.get('model')} s={r.get('seq_len')}\n{str(r.get('device'))[:18]}"
                  for r in steps]
        colors = ["tab:green" if r.get("system") == "inpo" else "tab:gray" for r in steps]
        ax.bar(range(len(steps)), [100 * r["mfu"] for r in steps], color=colors)
        if any(is_gpu(r) for r in steps):
            ax.axhline(45, color="tab:red", ls="--", lw=1, label="target 45%")
        ax.set_xticks(range(len(steps)), labels, fontsize=7)
        finish(fig, ax, "step_mfu")

    # Iteration: stacked phases per algorithm (latest per device/algorithm/model).
    iters = [r for r in latest(res.families.get("iteration", []), ITER_KEY)
             if any(r.get(f"{p}_s") is not None for p in PHASES)]
    if iters:
        fig, ax = new("online iteration: wall time per phase", "", "seconds per iteration")
        labels = [f"{r.get('algorithm')}\n{str(r.get('device'))[:18]}" for r in iters]
        bottom = [0.0] * len(iters)
        for p in (*PHASES, "other"):  # "other" on top: the bar's height is the whole iteration
            vals = [float(r.get(f"{p}_s") or 0.0) for r in iters]
            ax.bar(range(len(iters)), vals, bottom=bottom, label=p, **({"color": "lightgray"} if p == "other" else {}))
            bottom = [b + v for b, v in zip(bottom, vals)]
        # Where the train segment would end if precompute + train cost only their pure fwd/bwd work.
        floors = [None if r.get("pure_fwd_bwd_s") is None else
                  float(r.get("generate_s") or 0.0) + float(r.get("rank_s") or 0.0) + r["pure_fwd_bwd_s"]
                  for r in iters]
        if any(f is not None for f in floors):
            ax.scatter([i for i, f in enumerate(floors) if f is not None], [f for f in floors if f is not None],
                       marker="_", s=900, linewidths=2.5, color="k", zorder=3,
                       label="end of train with only pure fwd/bwd work")
        ax.set_xticks(range(len(iters)), labels, fontsize=7)
        finish(fig, ax, "iteration_phases")
    return made


# ---- the report ------------------------------------------------------------------------------------------------

def _head_family(res: Results, fam: str) -> list[dict]:
    recs = res.families.get(fam, [])
    return head_cpu_records(recs) if fam == "head-cpu" else recs


def _load_cell(load) -> str:
    if not load:
        return "—"
    xs = load if isinstance(load, list) else [load]
    return f"{min(xs):.1f}–{max(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def render(res: Results, out_path: Path, plots: dict[str, Path], results_dir: Path) -> str:
    base = out_path.parent
    gpu_any = any(is_gpu(r) for fam in res.families.values() for r in fam)
    L: list[str] = ["# Benchmark report", "",
                    f"Generated by `inpo bench report` from `{_rel(results_dir, base)}/*.jsonl` "
                    f"({len(res.files)} file(s)). Tables show the latest record per configuration; targets are "
                    "judged on full-size GPU records only (CPU `--smoke` records just keep the benches alive).", ""]
    if not gpu_any:
        L += ["> **No GPU results recorded yet.** Everything below comes from CPU runs (smoke modes or the CPU head "
              "bench); on a GPU machine run `inpo bench head`, `inpo bench step`, `inpo bench iteration`, then "
              "`inpo bench report`.", ""]
    if res.problems:
        L += ["Problems while loading: " + "; ".join(res.problems), ""]

    steps_all = res.families.get("step", [])
    iters_all = res.families.get("iteration", [])
    L += ["## Targets", "", table(
        [t.__dict__ for t in head_targets(res.families.get("head", [])) + step_targets(steps_all)
         + iteration_targets(iters_all)],
        [("target", "name", ""), ("status", "status", lambda r: f"**{r['status']}**"), ("measured", "detail", "")]),
        ""]
    cpu_head = head_cpu_targets(res.families.get("head-cpu", []))
    L += ["CPU head (native C++ op) targets, from `head-cpu.jsonl`:", "",
          table([t.__dict__ for t in cpu_head],
                [("target", "name", ""), ("status", "status", lambda r: f"**{r['status']}**"),
                 ("measured", "detail", "")]), ""]

    L += ["## Measured on CPU: inpo vs TRL, HF vs vLLM", "",
          "Side by side on this 2-core CPU, systems interleaved in every round (A, B, C, A, B, C, …), medians with "
          "bootstrap 90% intervals; the machine was shared with other jobs (load average per record), so absolute "
          "numbers are low and noisy, ratios from one run are what count.", "",
          table([t.__dict__ for t in cpu_targets(steps_all, iters_all, res.families.get("generation", []))],
                [("target", "name", ""), ("status", "status", lambda r: f"**{r['status']}**"),
                 ("measured", "detail", "")]), ""]
    cmp_rows = cpu_compare_rows(steps_all)
    if cmp_rows:
        L += ["Training step (`inpo bench step-cpu`): IPO, fp32, AdamW; tokens/s counts real (unpadded) tokens; "
              "*peak mem* = fresh-process peak RSS over model + optimiser + two steps, *step mem* = the second step "
              "alone.", "",
              table(cmp_rows, [("system", "system", ""), ("model", "", _model_cell), ("seq ≤", "seq_len", ""),
                               ("pairs/step", "pairs_per_step", ""), ("tokens/step", "tokens_per_step", ""),
                               ("step ms (90% CI)", "", lambda r: f"{fmt(r.get('step_median_ms'))} ("
                                f"{fmt((r.get('step_ci90_ms') or [None])[0])}–"
                                f"{fmt((r.get('step_ci90_ms') or [None, None])[1])})"),
                               ("tokens/s", "tokens_per_s", ""), ("vs TRL", "speedup_vs_trl", "x"),
                               ("peak mem", "peak_mem_bytes", "bytes"), ("step mem", "step_mem_bytes", "bytes"),
                               ("mem vs TRL", "mem_vs_trl", "x"), ("head", "impl", ""), ("threads", "torch_threads", ""),
                               ("load", "", lambda r: _load_cell(r.get("loadavg_1m"))), *PROVENANCE]), ""]
    gen_rows = latest(res.families.get("generation", []), ("device", "sampler", "model", "smoke"))
    if gen_rows:
        L += ["Generation (`python -m inpo.profiling.generation_bench` in the vLLM venv): same fp32 policy, same "
              "prompts, temperature 1 / top-p 1, eos ignored so every sample has the same length; one vLLM engine "
              "for the run, per-prompt seeds.", "",
              table(gen_rows, [("sampler", "sampler", ""), ("model", "model", ""), ("rows", "rows", ""),
                               ("new tokens", "new_tokens", ""), ("s (90% CI)", "", lambda r: f"{fmt(r.get('median_s'))} "
                               f"({fmt((r.get('ci90_s') or [None])[0])}–{fmt((r.get('ci90_s') or [None, None])[1])})"),
                               ("tokens/s", "tokens_per_s", ""), ("vs HF", "speedup_vs_hf", "x"),
                               ("engine start s", "engine_start_s", ""), ("first call s", "first_call_s", ""),
                               ("distinct", "distinct_samples", ""), ("break-even rows", "break_even_rows", ""),
                               ("load", "", lambda r: _load_cell(r.get("loadavg_1m"))), *PROVENANCE]), ""]

    # Step.
    L += ["## End-to-end training step", ""]
    step_rows = latest([r for r in steps_all if r.get("kind", "step") == "step"], STEP_KEY)
    if step_rows:
        trl_tps = {(r.get("device"), r.get("model"), r.get("seq_len")): r.get("tokens_per_s")
                   for r in step_rows if r.get("system") == "trl"}

        def vs_trl(r):
            t = trl_tps.get((r.get("device"), r.get("model"), r.get("seq_len")))
            return fmt(r["tokens_per_s"] / t, "x") if t and r.get("tokens_per_s") else "—"

        def oom(r):
            v = r.get("max_tokens_before_oom")
            return "—" if v is None else (fmt(v) if r.get("oom_reached") else f"≥ {fmt(v)}")

        L += ["Micro-batch tokens = the main measurement's size; *max before OOM* = the largest micro-batch the "
              "doubling sweep fitted (`≥` when the sweep limit, not memory, stopped it). MFU = (6·P·tokens + "
              "6·L·d·Σs²) / step time / bf16 GEMM peak measured in the same run (see `inpo/profiling/mfu.py`).", "",
              table(step_rows, [("system", "system", ""), ("model", "", _model_cell), ("seq", "seq_len", ""),
                                ("µbatch tok", "micro_batch_tokens", ""), ("step ms (p20–p80)", "",
                                lambda r: f"{fmt(r.get('step_median_ms'))} ({fmt(r.get('step_p20_ms'))}–"
                                          f"{fmt(r.get('step_p80_ms'))})"),
                                ("tokens/s", "tokens_per_s", ""), ("vs TRL", "", vs_trl), ("MFU", "mfu", "pct"),
                                ("peak mem", "peak_mem_bytes", "bytes"), ("max µbatch before OOM", "", oom),
                                ("J/step", "energy_per_step_j", ""), *PROVENANCE]), ""]
    else:
        L += ["No step results recorded yet (`inpo bench step`; `--smoke` on CPU).", ""]
    for name, title in (("step_throughput_vs_batch", "throughput vs micro-batch"),
                        ("step_memory_vs_batch", "memory vs micro-batch"), ("step_mfu", "MFU")):
        if name in plots:
            L += [f"![{title}]({_rel(plots[name], base)})", ""]

    # Iteration.
    L += ["## Online iteration cost", ""]
    iter_rows = latest(iters_all, ITER_KEY)
    if iter_rows:
        L += ["Wall time per phase of one online iteration and the oracle queries it made. *pure fwd/bwd* = the same "
              "number of bare forward (precompute) and forward+backward (train) passes on the same micro-batches, "
              "timed alone; *overhead* = (precompute + train) / pure fwd/bwd (target ≤ 1.3×); *other* = the rest "
              "of the iteration (orchestration, packing, checkpointing).", "",
              table(iter_rows, [("algorithm", "algorithm", ""), ("model", "", _model_cell),
                                *[(f"{p} s", f"{p}_s", "") for p in PHASES], ("other s", "other_s", ""),
                                ("total s", "total_s", ""), ("oracle queries", "oracle_queries", ""),
                                ("pure fwd/bwd s", "pure_fwd_bwd_s", ""), ("overhead", "overhead_ratio", "x"),
                                ("peak mem", "peak_mem_bytes", "bytes"), ("J/iteration", "energy_per_iteration_j", ""),
                                *PROVENANCE]), ""]
    else:
        L += ["No iteration results recorded yet (`inpo bench iteration`; `--smoke` on CPU).", ""]
    if "iteration_phases" in plots:
        L += [f"![iteration phases]({_rel(plots['iteration_phases'], base)})", ""]

    # Head.
    for fam, title in (("head", "Fused head microbench (GPU)"), ("head-cpu", "CPU head (native C++ op)")):
        L += [f"## {title}", ""]
        rows = latest(_head_family(res, fam), HEAD_KEY)
        if rows and fam == "head-cpu":
            L += ["fp32 forward+backward, impls interleaved in every round (median, p20–p80). *8NHV floor* = 8·N·H·V "
                  "FLOPs at the peak fp32 GEMM rate measured in the same run on a cache-resident GEMM (the best of "
                  "all rounds); *6NHV* the same for the useful work. `aten-gemms` (four materialised GEMMs) is a "
                  "reference, not a floor. *load* = 1-minute load average during the run (2 cores).", "",
                  table(rows, [("impl", "impl", ""), ("N", "N", ""), ("H", "H", ""), ("V", "V", ""),
                               ("fwd+bwd ms (p20–p80)", "", lambda r: f"{fmt(r.get('fwd_bwd_ms'))} ("
                                f"{fmt(r.get('fwd_bwd_p20_ms'))}–{fmt(r.get('fwd_bwd_p80_ms'))})"),
                               ("8NHV floor ms", "floor_8nhv_ms", ""), ("vs 8NHV floor", "floor_ratio", "x"),
                               ("vs 6NHV floor", "floor_ratio_6nhv", "x"), ("peak GFLOP/s", "peak_gflop_s", ""),
                               ("peak mem", "peak_mem_bytes", "bytes"), ("threads", "threads", ""),
                               ("load", "", lambda r: _load_cell(r.get("loadavg_1m"))), *PROVENANCE]), ""]
        elif rows:
            L += [table(rows, [("impl", "impl", ""), ("N", "N", ""), ("H", "H", ""), ("V", "V", ""),
                               ("dtype", "dtype", ""), ("inputs", "inputs", ""), ("entropy", "entropy", ""),
                               ("fwd+bwd ms", "fwd_bwd_ms", ""), ("floor ms", "floor_ms", ""),
                               ("floor ratio", "floor_ratio", "x"), ("TFLOP/s", "tflops", ""),
                               ("peak mem", "peak_mem_bytes", "bytes"), ("value err", "value_err", ""),
                               *PROVENANCE]), ""]
        else:
            L += [f"No `{fam}` results recorded yet." + (" (no GPU results recorded yet)" if fam == "head" else ""),
                  ""]
        for name in (f"{fam}_time_vs_shape", f"{fam}_floor_ratio"):
            if name in plots:
                L += [f"![{name}]({_rel(plots[name], base)})", ""]

    games = results_dir / "games" / "report.md"
    L += ["## Tabular games", ""]
    L += [f"Duality-gap convergence of INPO, ONPO and the baselines on exact games: [{_rel(games, base)}]"
          f"({_rel(games, base)})." if games.exists() else
          "No games report yet (`make games` writes `bench/results/games/report.md`).", ""]
    L += ["## How to reproduce", "",
          "On the GPU machine, install the optional baselines first (`pip install -e .[bench]`: trl, datasets, "
          "accelerate, liger-kernel, cut-cross-entropy; never a different torch); each bench skips a missing baseline "
          "with a message. On the lent offline device machine follow `bench/device/README.md`.", "",
          "```bash",
          "inpo bench head          # GPU microbench of the fused head (exact default and the opt-in filter)",
          "inpo bench head-cpu      # native CPU head vs the 8NHV/6NHV FLOP floor at the measured fp32 peak",
          "inpo bench step-cpu      # CPU side by side: our step vs TRL DPOTrainer(ipo) vs the naive head",
          ".venv-vllm/bin/python -m bench.generation   # CPU: HF generate vs vLLM (the CPU vLLM venv)",
          "inpo bench step          # end-to-end step vs TRL / naive head / Liger, with the OOM sweep",
          "inpo bench step --systems inpo --no-sweep --trace runs/step-trace.json   # Chrome trace of one step",
          "inpo bench iteration     # online iteration cost, INPO vs SPPO vs DNO-style",
          "inpo bench report        # this file",
          "inpo bench step --smoke; inpo bench iteration --smoke   # CPU smoke modes (seconds)", "```", ""]
    return "\n".join(L)


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def build_report(results_dir: str | os.PathLike = "bench/results", out: str | os.PathLike = "bench/REPORT.md", *,
                 plots_dir: str | os.PathLike | None = None, plots: bool = True) -> Path:
    """Read the results, draw the plots (``<results>/plots`` by default), write the Markdown; returns its path."""
    results_dir, out = Path(results_dir), Path(out)
    res = load_results(results_dir)
    made = make_plots(res, Path(plots_dir) if plots_dir else results_dir / "plots") if plots else {}
    return write_atomic(out, render(res, out, made, results_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="inpo bench report", description="bench/REPORT.md from bench/results/*.jsonl")
    ap.add_argument("--results", default="bench/results", help="folder of *.jsonl results (default bench/results)")
    ap.add_argument("--out", default="bench/REPORT.md", help="Markdown file to write (default bench/REPORT.md)")
    ap.add_argument("--plots-dir", default=None, help="where PNGs go (default <results>/plots)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--smoke", action="store_true", help="accepted for symmetry with the other benches (no-op)")
    args = ap.parse_args(argv)
    if Path(args.results).exists() and not Path(args.results).is_dir():
        print(f"inpo bench report: --results must be a folder of *.jsonl files, got file {args.results!r}",
              file=sys.stderr)
        return 2
    path = build_report(args.results, args.out, plots_dir=args.plots_dir, plots=not args.no_plots)
    print(f"[bench report] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
