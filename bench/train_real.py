"""``make train-real``: online INPO on SmolLM2-135M-Instruct with the shipped prompts, and the record of the run.

    python -m bench.train_real [--config configs/smollm2_real.yaml] [--output runs/real]
                               [--out bench/results/train-real.jsonl] [--smoke] [KEY VALUE ...]

Runs ``python -m inpo train --config CONFIG --output OUTPUT --overwrite [--KEY VALUE ...]`` in its own process (what a
user would type), then reads the run directory and writes

* one JSON line to ``--out``: the environment (device, versions, commit), the command, wall time, the load before
  and after, threads, the resolved config, per iteration the win-rate against the starting model with its 95 %
  bootstrap interval (``metrics.jsonl``), pairs, oracle queries, the phase times, and, for π_ref and each iterate,
  what the format oracle reads in the held-out answers (mean quality and each check, word count, format shares);
* ``--out`` with ``.md`` instead of ``.jsonl``: the same as a table plus example answers before/after (the first
  answer of π_ref and of the last iterate to a few held-out prompts, each with its format and checks).

``--smoke`` shrinks the run to a few prompts and tokens (a check that the pipeline runs; its record goes under the
run directory unless ``--out`` is given). Trailing ``KEY VALUE`` pairs override the config (``k 8``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.lib.outputs import output_problem
from inpo.oracles import FormatOracle
from inpo.oracles.formats import FORMATS, QUALITY_WEIGHTS
from inpo.utils.record import append_jsonl, environment_info

PROG = "python -m bench.train_real"
SMOKE = {"n_prompts": 4, "k": 2, "max_new_tokens": 16, "n_eval": 4, "eval_k": 1, "batch_pairs": 4, "max_tokens": 512,
         "n_bootstrap": 200}
EXAMPLES = 4


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answer_profile(oracle: FormatOracle, rows: list[dict]) -> dict:
    """What the format oracle reads in held-out answers (``rows``: ``{"prompt", "responses"}``): mean quality, mean of
    each check, mean words, and the share of each format ("none": no words)."""
    feats = [oracle.features(r["prompt"], y) for r in rows for y in r["responses"]]
    out = {"answers": len(feats), "quality": round(float(np.mean([f["quality"] for f in feats])), 4),
           "words": round(float(np.mean([f["words"] for f in feats])), 1)}
    out.update({k: round(float(np.mean([f[k] for f in feats])), 4) for k in QUALITY_WEIGHTS})
    out["formats"] = {s or "none": round(sum(f["style"] == s for f in feats) / len(feats), 4) for s in (*FORMATS, None)}
    return out


def run_record(run: Path, oracle: FormatOracle) -> dict:
    """Iteration rows, answer profiles and examples read from a finished run directory."""
    rows = [r for r in _read_jsonl(run / "metrics.jsonl") if r.get("kind") == "iteration"]
    keep = ("iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "eval_n", "eval_queries", "pairs",
            "oracle_queries", "ties_dropped", "exploitability", "exploitability_ci_low", "exploitability_ci_high")
    iterations = [{k: v for k, v in r.items() if k in keep or k.endswith("_s")} for r in rows]  # *_s: phase times
    ref = _read_jsonl(run / "eval_ref_responses.jsonl")
    profiles = {"ref": answer_profile(oracle, ref)}
    last = None
    for r in rows:
        path = run / f"iter_{r['iteration']:03d}" / "eval_responses.jsonl"
        if path.is_file():
            last = _read_jsonl(path)
            profiles[f"iter_{r['iteration']:03d}"] = answer_profile(oracle, last)
    examples = []
    for before, after in list(zip(ref, last or []))[:EXAMPLES]:
        pair = {"prompt": before["prompt"]}
        for name, text in (("before", before["responses"][0]), ("after", after["responses"][0])):
            f = oracle.features(before["prompt"], text)
            pair[name] = {"text": text, "format": f["style"], "quality": round(f["quality"], 3),
                          **{k: round(f[k], 3) for k in QUALITY_WEIGHTS}}
        examples.append(pair)
    return {"iterations": iterations, "profiles": profiles, "examples": examples}


def _markdown(rec: dict) -> str:
    lines = [f"# `make train-real` ({rec['date']}, commit {rec['commit']})", "",
             f"`{rec['command']}`: {rec['wall_s']} s wall, load {rec['loadavg_1m']} (1-min, before/after), "
             f"OMP_NUM_THREADS={rec['omp_num_threads']}{', SMOKE size' if rec['smoke'] else ''}.", "",
             "| iteration | win-rate vs π_ref [95 % CI] | pairs | oracle queries | wall s |", "|---|---|---|---|---|"]
    for r in rec["iterations"]:
        lines.append(f"| {r['iteration']} | {r.get('win_rate', float('nan')):.3f} [{r.get('win_rate_ci_low', 0):.3f}, "
                     f"{r.get('win_rate_ci_high', 0):.3f}] | {r.get('pairs')} | {r.get('oracle_queries')} | "
                     f"{r.get('wall_s', 0):.0f} |")
    lines += ["", "Held-out answers as the format oracle reads them (means; formats as shares):", "",
              "| policy | quality | complete | length | variety | on_topic | words | list / paragraphs / single |",
              "|---|---|---|---|---|---|---|---|"]
    for name, p in rec["profiles"].items():
        fm = p["formats"]
        lines.append(f"| {name} | {p['quality']:.3f} | {p['complete']:.2f} | {p['length']:.2f} | {p['variety']:.2f} "
                     f"| {p['on_topic']:.2f} | {p['words']:.0f} | {fm['list']:.2f} / {fm['paragraphs']:.2f} / "
                     f"{fm['single']:.2f} |")
    lines += ["", "## Examples (first held-out answer of π_ref and of the last iterate)", ""]
    for ex in rec["examples"]:
        lines.append(f"**{ex['prompt']}**\n")
        for name in ("before", "after"):
            a = ex[name]
            lines.append(f"*{name}* ({a['format']}, quality {a['quality']}):\n\n```text\n{a['text'].strip()}\n```\n")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/smollm2_real.yaml")
    ap.add_argument("--output", default=None, help="the run directory (default runs/real, runs/real-smoke)")
    ap.add_argument("--out", default=None, help="the record (default bench/results/train-real.jsonl; with "
                                                "--smoke OUTPUT/train-real.jsonl)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run: does the pipeline work")
    ap.add_argument("--record-only", action="store_true", help="no training: record the finished run in --output")
    ap.add_argument("overrides", nargs="*", help="KEY VALUE pairs passed to inpo train as --KEY VALUE")
    return ap


def _train_argv(args) -> list[str]:
    if len(args.overrides) % 2:
        raise ValueError(f"overrides must be KEY VALUE pairs, got {args.overrides!r}")
    pairs = dict(SMOKE) if args.smoke else {}
    pairs.update(zip(args.overrides[::2], args.overrides[1::2]))
    extra = [x for k, v in pairs.items() for x in (f"--{k}", str(v))]
    return ["--config", args.config, "--output", args.output, "--overwrite", *extra]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.output = args.output or ("runs/real-smoke" if args.smoke else "runs/real")
    args.out = args.out or (f"{args.output}/train-real.jsonl" if args.smoke else "bench/results/train-real.jsonl")
    problem = output_problem(PROG, files={"--out": args.out}, folders={"--output": args.output})
    if problem or not Path(args.config).is_file():
        print(problem or f"{PROG}: --config {args.config!r} is not a file; nothing was run", file=sys.stderr)
        return 2
    try:
        train = _train_argv(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    load, t0 = [os.getloadavg()[0]], time.perf_counter()
    rc = 0 if args.record_only else subprocess.run([sys.executable, "-m", "inpo", "train", *train]).returncode
    wall, load = time.perf_counter() - t0, load + [os.getloadavg()[0]]
    if args.record_only:
        wall, load = None, []  # the run's own time is in its metrics (wall_s per iteration)
    if rc != 0:
        print(f"{PROG}: inpo train exited with {rc}; no record written", file=sys.stderr)
        return rc
    run = Path(args.output)
    rec = {"bench": "train_real", **environment_info("cpu"), "smoke": args.smoke,
           "command": PROG + " " + shlex.join(sys.argv[1:] if argv is None else argv),
           "train_command": "python -m inpo train " + shlex.join(train), "wall_s": wall and round(wall, 1),
           "loadavg_1m": [round(x, 2) for x in load], "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "config": (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else None,
           **run_record(run, FormatOracle())}
    append_jsonl(args.out, rec)
    md, text = Path(args.out).with_suffix(".md"), _markdown(rec)
    md.write_text(text, encoding="utf-8")
    print(text + f"\n[train-real] record -> {args.out}, summary -> {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
