"""The report's verdicts: each target is met / not met / not yet measured, judged from the latest records.

GPU targets are judged only on GPU records of the full-size benches (CPU smoke records keep the code alive, they do
not measure the product); the CPU side-by-side targets on non-smoke CPU records.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from bench.report.data import HEAD_KEY, ITER_KEY, cpu_compare_rows, head_cpu_records, is_gpu, latest, step_rows
from bench.report.fmt import fmt

MET, NOT_MET, NOT_YET = "met", "not met", "not yet measured"


@dataclass
class Target:
    name: str
    status: str
    detail: str


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


# ---- GPU step and iteration ----------------------------------------------------------------------------------

STEP_VS_TRL = "INPO step ≥ 2× TRL DPOTrainer(ipo) tokens/s"
STEP_MFU = "MFU ≥ 45% at 2048 tokens/sequence"
STEP_OOM = "largest micro-batch before OOM ≥ 4× TRL's"


def _full_size_steps(steps: list[dict]) -> list[dict]:
    return [r for r in step_rows(steps) if is_gpu(r) and not r.get("smoke") and r.get("model") == "llama-3.2-1b"]


def _by_device(recs: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in recs:
        out[str(r.get("device"))][str(r.get("system"))] = r
    return out


def _oom_target(dev: str, ours: dict, trl: dict) -> Target:
    a, b = ours.get("max_tokens_before_oom"), trl.get("max_tokens_before_oom")
    if not (a and b):
        return Target(STEP_OOM, NOT_YET, "the step records carry no sweep result (run without --no-sweep)")
    ratio = a / b
    if not trl.get("oom_reached"):  # TRL's ceiling was the sweep limit: no capacity ratio to judge
        status, note = NOT_YET, " (TRL never hit OOM: raise --sweep-limit-tokens)"
    elif ratio >= 4:  # a lower bound on ours when our sweep stopped at the limit
        status, note = MET, "" if ours.get("oom_reached") else " (ours: ≥, the sweep limit stopped it)"
    elif not ours.get("oom_reached"):
        status, note = NOT_YET, " (ours never hit OOM: raise --sweep-limit-tokens)"
    else:
        status, note = NOT_MET, ""
    return Target(STEP_OOM, status, f"{ratio:.2f}× on {dev} ({fmt(a)} vs {fmt(b)} tokens){note}")


def step_targets(steps: list[dict]) -> list[Target]:
    """Tokens/s vs TRL and the micro-batch capacity (one device, inpo and trl records), and MFU."""
    per_dev = _by_device([r for r in _full_size_steps(steps) if r.get("seq_len") == 2048])
    pairs = [(dev, s["inpo"], s["trl"]) for dev, s in per_dev.items() if "inpo" in s and "trl" in s]
    targets = []
    if pairs:
        dev, ours, trl = pairs[-1]
        ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
        targets.append(Target(STEP_VS_TRL, _verdict(ratio >= 2), f"{ratio:.2f}× on {dev} ({fmt(ours['tokens_per_s'])} "
                                                                  f"vs {fmt(trl['tokens_per_s'])} tok/s)"))
    else:
        targets.append(Target(STEP_VS_TRL, NOT_YET, "needs inpo and trl step records at seq_len 2048 on one GPU"))
    ours_all = [s["inpo"] for s in per_dev.values() if "inpo" in s and s["inpo"].get("mfu") is not None]
    if ours_all:
        r = ours_all[-1]
        peak = (f"datasheet peak {fmt(r.get('mfu_peak_tflops'))} TFLOP/s" if r.get("mfu_peak_source") == "datasheet"
                else f"peak {fmt(r.get('peak_tflops'))} TFLOP/s measured by a {r.get('gemm_dtype', 'bf16')} GEMM in "
                     "the same run")
        targets.append(Target(STEP_MFU, _verdict(r["mfu"] >= 0.45), f"{fmt(r['mfu'], 'pct')} on {r['device']} ({peak})"))
    else:
        targets.append(Target(STEP_MFU, NOT_YET, "needs an inpo step record on a GPU"))
    targets.append(_oom_target(*pairs[-1]) if pairs else Target(STEP_OOM, NOT_YET, "needs inpo and trl sweeps on one GPU"))
    return targets


def iteration_targets(iters: list[dict]) -> list[Target]:
    name = "online iteration: precompute + train ≤ 1.3× pure forward/backward"
    recs = [r for r in latest(iters, ITER_KEY) if is_gpu(r) and not r.get("smoke")
            and str(r.get("algorithm", "")).lower() == "inpo" and r.get("overhead_ratio") is not None]
    if not recs:
        return [Target(name, NOT_YET, "needs a GPU iteration record for INPO")]
    r = recs[-1]
    ratio = r["overhead_ratio"]
    return [Target(name, _verdict(ratio <= 1.3), f"{ratio:.2f}× on {r['device']}")]


# ---- GPU head --------------------------------------------------------------------------------------------------

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
# What a missing verdict needs besides the target-shape records themselves.
HEAD_TARGET_NEEDS = {"exact_cce": " with CCE installed", "filter_cce": " with CCE installed and the opt-in filter",
                     "filter_floor": " with the opt-in filter (`grad_filter`)", "liger": " with Liger installed",
                     "mem": " with CCE installed"}


def _head_rows_by_device(recs: list[dict]) -> dict[str, dict[str, dict]]:
    rows = [r for r in latest(recs, HEAD_KEY) if is_gpu(r) and r.get("dtype") == "bf16" and not r.get("smoke")
            and (r.get("N"), r.get("H"), r.get("V")) == HEAD_TARGET_SHAPE and r.get("inputs") == HEAD_TARGET_INPUTS]
    by_dev: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_dev[str(r["device"])][str(r.get("impl"))] = r
    return by_dev


def _fastest(by: dict, impls: tuple[str, ...], exact: bool) -> dict | None:
    ok = [by[m] for m in impls if m in by and by[m].get("fwd_bwd_ms") and by[m].get("value_ok") is not False
          and (not exact or by[m].get("exact") is True)]
    return min(ok, key=lambda r: r["fwd_bwd_ms"]) if ok else None


def _head_device_verdicts(by: dict[str, dict], where: str, verdicts: dict[str, list]) -> None:
    """Append one device's (ok, detail) verdicts: floor ratios, speedups vs CCE / Liger, memory vs CCE."""
    cce, liger = by.get("cce"), by.get("liger")
    exact, filt = _fastest(by, EXACT, True), _fastest(by, FILTERED, False)
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


def head_targets(recs: list[dict]) -> list[Target]:
    """The GPU head targets on the latest bf16 records at N=16384 H=2048 V=128256 with peaked inputs, per device.
    "Exact" is the faster of the exact Triton backwards (atomic, chunked) whose record says ``exact``; "filter" is
    the opt-in filter (``inpo-triton-filter``). A record whose forward disagreed with the fp32 reference
    (``value_ok`` False) cannot meet anything."""
    verdicts: dict[str, list[tuple[bool, str]]] = defaultdict(list)
    checked: list[tuple[bool, float, str]] = []
    for dev, by in _head_rows_by_device(recs).items():
        where = "{}×{}×{} {} on {}".format(*HEAD_TARGET_SHAPE, HEAD_TARGET_INPUTS, dev)
        checked += [(bool(r["value_ok"]), float(r.get("value_err") or 0.0), f"{impl} at {where}")
                    for impl, r in by.items() if r.get("value_ok") is not None]
        _head_device_verdicts(by, where, verdicts)
    if checked:
        bad = [f"✗ {w} (error {e:.2e})" for ok, e, w in checked if not ok]
        verdicts["value"] = [(not bad, "; ".join(bad) if bad else
                              f"{len(checked)} records, max relative error {max(e for _, e, _ in checked):.1e}")]
    need_cmd = "needs bf16 H100/H200 head records at {}×{}×{} peaked (`python -m bench.head`)".format(*HEAD_TARGET_SHAPE)
    out = []
    for key, name in HEAD_TARGET_NAMES.items():
        got = verdicts.get(key)
        if not got:
            out.append(Target(name, NOT_YET, need_cmd + HEAD_TARGET_NEEDS.get(key, "")))
        else:
            out.append(Target(name, _verdict(all(ok for ok, _ in got)),
                              "; ".join(("" if ok else "✗ ") + d for ok, d in got)))
    return out


# ---- CPU head ------------------------------------------------------------------------------------------------

HEAD_CPU_FLOOR_TARGET = 1.25  # native fwd+bwd / (8·N·H·V FLOPs at the fp32 GEMM peak measured in the same run)
HEAD_CPU_NAMES = (f"native fwd+bwd ≤ {HEAD_CPU_FLOOR_TARGET}× the 8NHV floor (FLOPs at the fp32 GEMM peak measured "
                  "in the same run)", "native ≥ 1.15× faster than impl=torch", "native peak memory ≤ 1/10 of naive's")


def _head_cpu_floor(nat: dict, where: str) -> Target:
    name = HEAD_CPU_NAMES[0]
    if not (nat.get("floor_kind") and nat.get("floor_ratio") is not None):
        return Target(name, NOT_YET, f"the record at {where} predates the measured-peak floor "
                                     "(`python -m bench.head_cpu` again)")
    fr = nat["floor_ratio"]
    detail = (f"{fr:.2f}× the 8NHV floor ({fmt(nat.get('floor_ratio_6nhv'), 'x')} the 6NHV floor; peak "
              f"{fmt(nat.get('peak_gflop_s'))} GFLOP/s) at {where}")
    if fr < 1.0:  # nothing beats a true floor: the GEMM peak was measured too low (load, small GEMMs)
        return Target(name, NOT_YET, f"invalid peak: the native head ran {1 / fr:.2f}× faster than its 'floor' "
                                     f"({detail}); re-run on a quieter machine")
    return Target(name, _verdict(fr <= HEAD_CPU_FLOOR_TARGET), detail)


def _head_cpu_shape(shape: tuple, s: dict[str, dict], mem: dict, where: str) -> list[Target]:
    nat = s["inpo-native"]
    out = [_head_cpu_floor(nat, where)]
    t = s.get("torch")
    if t and t.get("fwd_bwd_ms") and nat.get("fwd_bwd_ms"):
        sp = t["fwd_bwd_ms"] / nat["fwd_bwd_ms"]
        out.append(Target(HEAD_CPU_NAMES[1], _verdict(sp >= 1.15), f"{sp:.2f}× at {where}"))
    # Memory from the latest records that measured it (a timing-only re-run, --mem off, carries none).
    nat_m, nv_m = (mem.get((shape, impl)) for impl in ("inpo-native", "naive"))
    if nv_m and nat_m and nv_m.get("peak_mem_bytes"):
        frac = nat_m["peak_mem_bytes"] / nv_m["peak_mem_bytes"]
        when = "" if nat_m is nat else f" (run of {fmt(nat_m.get('date'), 'date')})"
        out.append(Target(HEAD_CPU_NAMES[2], _verdict(frac <= 0.1), f"{frac:.3f} of naive at {where}{when}"))
    return out


def head_cpu_targets(recs: list[dict]) -> list[Target]:
    """The native CPU head's targets, on the latest head-cpu records per shape: fwd+bwd ≤ 1.25× the 8NHV FLOP
    floor at the peak measured in the same run, ≥ 1.15× faster than impl=torch, ≤ 1/10 of naive's peak memory."""
    counted = head_cpu_records(recs)
    mem = {((r.get("N"), r.get("H"), r.get("V")), str(r.get("impl"))): r
           for r in latest([r for r in counted if r.get("peak_mem_bytes") is not None and not r.get("smoke")],
                           HEAD_KEY)}
    shapes: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in latest(counted, HEAD_KEY):
        if not r.get("smoke"):
            shapes[(r.get("N"), r.get("H"), r.get("V"))][str(r.get("impl"))] = r
    if not any("inpo-native" in s for s in shapes.values()):
        return [Target(n, NOT_YET, "needs head-cpu records with impl inpo-native") for n in HEAD_CPU_NAMES]
    return [t for shape, s in shapes.items() if "inpo-native" in s
            for t in _head_cpu_shape(shape, s, mem, f"N={shape[0]} H={shape[1]} V={shape[2]}")]


# ---- measured on CPU: inpo vs TRL, HF vs vLLM (issue 14 §5) ---------------------------------------------------

CPU_STEP_SPEEDUP, CPU_STEP_MEM, CPU_OVERHEAD = 1.5, 0.5, 1.3


def _cpu_step_targets(steps: list[dict]) -> list[Target]:
    name = f"CPU step ≥ {CPU_STEP_SPEEDUP}× TRL DPOTrainer(ipo) tokens/s"
    name_mem = f"CPU step peak memory ≤ {CPU_STEP_MEM:g}× TRL's"
    by = {r.get("system"): r for r in cpu_compare_rows(steps) if not r.get("smoke")}
    ours, trl = by.get("inpo"), by.get("trl")
    if not (ours and trl and ours.get("commit") == trl.get("commit") and trl.get("tokens_per_s")):
        return [Target(n, NOT_YET, "needs inpo and trl records of one `python -m bench.step_cpu` run")
                for n in (name, name_mem)]
    sp = ours["tokens_per_s"] / trl["tokens_per_s"]
    ci = ""
    if ours.get("tokens_per_s_ci90") and trl.get("tokens_per_s_ci90"):
        lo = ours["tokens_per_s_ci90"][0] / trl["tokens_per_s_ci90"][1]
        hi = ours["tokens_per_s_ci90"][1] / trl["tokens_per_s_ci90"][0]
        ci = f", conservative 90% range {lo:.2f}–{hi:.2f}×"
    out = [Target(name, _verdict(sp >= CPU_STEP_SPEEDUP),
                  f"{sp:.2f}× ({fmt(ours['tokens_per_s'])} vs {fmt(trl['tokens_per_s'])} tok/s{ci}; "
                  f"{ours.get('model')}, ≤{ours.get('seq_len')}-token variable pairs)")]
    if not (ours.get("peak_mem_bytes") and trl.get("peak_mem_bytes")):
        return out + [Target(name_mem, NOT_YET, "the records carry no peak memory (run without --no-mem)")]
    m = ours["peak_mem_bytes"] / trl["peak_mem_bytes"]
    step_m = (f"; step-only {fmt(ours.get('step_mem_bytes'), 'bytes')} vs "
              f"{fmt(trl.get('step_mem_bytes'), 'bytes')}" if ours.get("step_mem_bytes") else "")
    return out + [Target(name_mem, _verdict(m <= CPU_STEP_MEM), f"{m:.2f}× ({fmt(ours['peak_mem_bytes'], 'bytes')} "
                                                                f"vs {fmt(trl['peak_mem_bytes'], 'bytes')} "
                                                                f"fresh-process peak{step_m})")]


def _cpu_iteration_targets(iters: list[dict]) -> list[Target]:
    cpu_iters = [r for r in latest(iters, ITER_KEY) if not is_gpu(r) and not r.get("smoke")
                 and r.get("overhead_ratio") is not None]
    if not cpu_iters:
        return [Target(f"CPU online iteration: precompute + train ≤ {CPU_OVERHEAD}× pure fwd/bwd", NOT_YET,
                       "needs a non-smoke CPU `python -m bench.iteration` record")]
    return [Target(f"CPU online iteration ({r.get('algorithm')}): precompute + train ≤ {CPU_OVERHEAD}× pure fwd/bwd",
                   _verdict(r["overhead_ratio"] <= CPU_OVERHEAD),
                   f"{r['overhead_ratio']:.2f}× ({fmt(r.get('precompute_s'))} + {fmt(r.get('train_s'))} s vs "
                   f"{fmt(r.get('pure_fwd_bwd_s'))} s; {r.get('model')})") for r in cpu_iters]


def _sampler_target(gens: list[dict]) -> Target:
    g = {r.get("sampler"): r for r in latest(gens, ("device", "sampler", "model")) if not is_gpu(r)}
    name = "default sampler = the faster one on this CPU (`sampler: auto`)"
    if not ("hf" in g and "vllm" in g):
        return Target(name, NOT_YET, "needs hf and vllm records of one `python -m bench.generation` run (vLLM venv)")
    fast = max(("hf", "vllm"), key=lambda s: g[s]["tokens_per_s"])
    be = g["vllm"].get("break_even_rows")
    return Target(name, "measured", f"{fast} is faster: vLLM {fmt(g['vllm']['tokens_per_s'])} vs HF "
                                    f"{fmt(g['hf']['tokens_per_s'])} tok/s steady state; vLLM engine start "
                                    f"{fmt(g['vllm'].get('engine_start_s'))} s"
                                    + (f", paid back after {be:,.0f} sampled rows" if be else ""))


def cpu_targets(steps: list[dict], iters: list[dict], gens: list[dict]) -> list[Target]:
    """The CPU side-by-side targets: our step ≥ 1.5× TRL's tokens/s at ≤ ½ its peak memory (latest non-smoke
    cpu-compare records of one run), the online iteration's (precompute + train) / pure fwd/bwd ≤ 1.3× per
    algorithm (latest non-smoke CPU iteration records), and which sampler generated faster (the default)."""
    return _cpu_step_targets(steps) + _cpu_iteration_targets(iters) + [_sampler_target(gens)]
