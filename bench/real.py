"""Benchmarks at the real shape: SmolLM2-135M-Instruct (``inpo fetch-model smollm2``), over the public API.

    python -m bench.real step        # training step: inpo vs TRL 1.16 DPOTrainer (DPO, precomputed reference)
    .venv-vllm/bin/python -m bench.real generation   # vLLM CPU vs HF generate (tokens/s, engine start)
    python -m bench.real iteration   # one online INPO iteration: wall time per phase, the sampler `auto` picks
    python -m bench.real pairs       # (re)make bench/data/smollm2_pairs.jsonl (the model's own answers)

Every system runs in its own process (``--worker``), in interleaved rounds (A, B, A, B, ...), so load from other
processes hits all alike; each record carries the load average before and after, the thread count, the commit and
the command. ``--smoke`` shrinks everything to seconds (tests, a loaded machine): its numbers are not results.
Records append to ``bench/results/real-<bench>.jsonl`` (``--out`` to change).

The step's pairs are real chat pairs: 16 instruction prompts (bench/data/real_prompts.txt) with two answers each
sampled from SmolLM2 itself (``pairs``; committed, so every run trains on the same tokens), rendered with the
model's ChatML template, variable length. The step's FLOP floor: 6·P·T for the decoder body (P = parameters
without the tied embedding, T = real tokens of the step) + 8·N·H·V for the head (N = response tokens, the
recompute design's 4 GEMMs), at the fp32 GEMM peak of the same process and threads
(bench.lib.timing.measure_peak_flops on 1536 x 1536, the fastest of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.lib.memory import status_kb
from bench.lib.outputs import output_problem
from bench.lib.timing import measure_peak_flops

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "data" / "real_prompts.txt"
PAIRS = HERE / "data" / "smollm2_pairs.jsonl"
RESULTS = HERE / "results"
MODEL = "smollm2"


# ---- shared -------------------------------------------------------------------------------------------------------

def _peak_rss_bytes() -> int:
    return (status_kb("VmHWM") or 0) * 1024  # this process's peak resident memory


def _record(out: Path, rec: dict) -> None:
    """One JSONL line with the run's context (inpo.utils.record's environment: device, versions, commit; plus the
    load average before and after, and the command)."""
    from inpo.utils.record import append_jsonl, environment_info

    rec = {**environment_info("cpu"), "command": shlex.join([Path(sys.executable).name, "-m", "bench.real",
                                                            *sys.argv[1:]]), "load_after": list(os.getloadavg()),
           **rec}
    append_jsonl(out, rec)
    print(json.dumps(rec, indent=1))


def _worker(argv: list[str], timeout: float = 7200) -> dict:
    """Run ``python -m bench.real ... --worker SYSTEM`` in a fresh process; its last stdout line is a JSON dict."""
    cmd = [sys.executable, "-m", "bench.real", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if res.returncode != 0:
        raise RuntimeError(f"worker {shlex.join(argv)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median_range(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _interleave(systems: list[str], rounds: int, argv_of) -> dict[str, list[dict]]:
    """Each round runs every system once, in turn, each in its own process."""
    got: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(rounds):
        for s in systems:
            print(f"[bench.real] round {r + 1}/{rounds}: {s}", file=sys.stderr, flush=True)
            got[s].append(_worker(argv_of(s)))
    return got


def _chat_seqs(n_pairs: int, *, max_response: int | None = None) -> tuple[list, list[dict]]:
    """The first ``n_pairs`` committed pairs as (prompt_ids, response_ids) per sequence (chosen, rejected, ...)."""
    from inpo.data.chat import encode_pair
    from inpo.data.tokenizer import load_tokenizer

    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()][:n_pairs]
    if len(rows) < n_pairs:
        raise ValueError(f"--pairs {n_pairs}: {PAIRS} holds only {len(rows)} pairs")
    if max_response is not None:  # --smoke: short answers
        for r in rows:
            for k in ("chosen", "rejected"):
                r[k] = [{"role": "assistant", "content": r[k][0]["content"][:max_response]}]
    tok = load_tokenizer(MODEL)
    seqs = []
    for r in rows:
        p, c, j = encode_pair(tok, r)
        seqs += [(p, c), (p, j)]
    return seqs, rows


# ---- pairs: the model's own answers, made once and committed -------------------------------------------------------

def make_pairs(args) -> int:
    from inpo.data.tokenizer import load_tokenizer
    from inpo.generation import HFSampler
    from inpo.train.model import load_policy

    torch.set_num_threads(args.threads)
    prompts = [p for p in PROMPTS.read_text().splitlines() if p.strip()]
    tok = load_tokenizer(MODEL)
    sampler = HFSampler(load_policy(MODEL).eval(), tok, max_new_tokens=args.max_new_tokens, temperature=0.8,
                        top_p=0.95)
    answers = sampler.sample(prompts, 2, seed=args.seed)
    with open(args.out or PAIRS, "w") as f:
        for p, (a, b) in zip(prompts, answers):
            f.write(json.dumps({"prompt": [{"role": "user", "content": p}],
                                "chosen": [{"role": "assistant", "content": a}],
                                "rejected": [{"role": "assistant", "content": b}]}) + "\n")
    print(f"wrote {len(prompts)} pairs to {args.out or PAIRS}")
    return 0


# ---- (a) the training step --------------------------------------------------------------------------------------

def step_floor_flops(config, seqs) -> float:
    """6·P·T (the body's matmul parameters, inpo.utils.mfu's count without the head) + 8·N·H·V (the head over the
    response tokens: the recompute design's four GEMMs)."""
    from inpo.utils.mfu import matmul_params

    h, v = config.hidden_size, config.vocab_size
    tokens = sum(len(p) + len(r) for p, r in seqs)
    response = sum(len(r) for _, r in seqs)
    return 6.0 * (matmul_params(config) - v * h) * tokens + 8.0 * response * h * v


def _inpo_stepper(args, seqs):
    from inpo.data.packing import pack_sequences
    from inpo.objectives import DPO
    from inpo.train.loop import precompute_logps
    from inpo.train.model import load_policy
    from inpo.train.optim import make_optimizer
    from inpo.train.step import train_step

    model = load_policy(MODEL, attn_implementation="inpo_varlen")
    if args.system == "inpo-ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = precompute_logps(model, seqs, max_tokens=args.max_tokens, pairwise=True)  # precomputed, untimed
    batches = pack_sequences(seqs, max_tokens=args.max_tokens, pairwise=True)
    opt = make_optimizer(model, lr=1e-6, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    side = {"ref_logps": ref}

    def step():
        t0 = time.perf_counter()
        train_step(model, batches, DPO(beta=0.1), opt, sched, side)
        return time.perf_counter() - t0
    return model, step, {"micro_batches": len(batches), "max_tokens": args.max_tokens}


def _trl_stepper(args, rows, n_steps):
    """TRL's DPOTrainer: its best CPU config for the same pairs per step (precomputed reference, no gradient
    checkpointing, foreach AdamW), ``--trl-batch`` pairs per micro-batch; each ``train()`` call runs one step."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from inpo.models import resolve_model
    from inpo.train.model import load_policy

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            times.append(time.perf_counter() - self.t0)

    folder = resolve_model(MODEL)
    config = DPOConfig(output_dir=f"/tmp/inpo-bench-real-trl-{os.getpid()}", per_device_train_batch_size=args.trl_batch,
                       gradient_accumulation_steps=args.pairs // args.trl_batch, max_steps=n_steps,
                       learning_rate=1e-6, lr_scheduler_type="constant", adam_beta2=0.999, optim="adamw_torch",
                       beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True, gradient_checkpointing=False,
                       logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                       max_length=None, dataloader_num_workers=0, seed=0)
    model = load_policy(MODEL, attn_implementation="sdpa")  # TRL pads its rows: transformers' masks
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows * n_steps),
                         processing_class=AutoTokenizer.from_pretrained(folder), callbacks=[Timer()])

    def run_all():
        trainer.train()
        return list(times)
    info = {"per_device_train_batch_size": args.trl_batch, "gradient_accumulation_steps": args.pairs // args.trl_batch,
            "trl": sys.modules["trl"].__version__}
    return model, run_all, info


def step_worker(args) -> dict:
    torch.set_num_threads(args.threads)
    seqs, rows = _chat_seqs(args.pairs, max_response=200 if args.smoke else None)
    base_rss = _peak_rss_bytes()
    n_steps = 1 + args.steps  # one warm-up step, not counted
    if args.system == "trl":
        model, run_all, info = _trl_stepper(args, rows, n_steps)
        step_s = run_all()[1:]
    else:
        model, step, info = _inpo_stepper(args, seqs)
        step_s = [step() for _ in range(n_steps)][1:]
    floor = step_floor_flops(model.config, seqs)
    peak = measure_peak_flops("cpu", torch.float32, n=1536, reps=5)["peak_flops"]  # the fastest of 5, these threads
    tokens = sum(len(p) + len(r) for p, r in seqs)
    med = statistics.median(step_s)
    return {"system": args.system, "step_s": step_s, "tokens": tokens,
            "response_tokens": sum(len(r) for _, r in seqs), "tokens_per_s": tokens / med,
            "peak_rss_bytes": _peak_rss_bytes(), "peak_rss_over_start_bytes": _peak_rss_bytes() - base_rss,
            "floor_flops": floor, "gemm_peak_flops": peak, "pct_of_floor": 100 * floor / peak / med,
            "threads": torch.get_num_threads(), **info}


def step_bench(args) -> int:
    systems = args.systems.split(",")
    if args.pairs % args.trl_batch:
        raise ValueError(f"--pairs {args.pairs} must be a multiple of --trl-batch {args.trl_batch} (TRL accumulates "
                         f"--pairs / --trl-batch micro-batches per step)")
    common = ["step", "--pairs", str(args.pairs), "--steps", str(args.steps), "--threads", str(args.threads),
              "--max-tokens", str(args.max_tokens), "--trl-batch", str(args.trl_batch)]
    common += ["--smoke"] if args.smoke else []
    load_before = list(os.getloadavg())
    got = _interleave(systems, args.rounds, lambda s: common + ["--worker", s])
    summary = {}
    for s, runs in got.items():
        summary[s] = {"tokens_per_s": _median_range([r["tokens_per_s"] for r in runs]),
                      "step_s": _median_range([x for r in runs for x in r["step_s"]]),
                      "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
                      "peak_rss_over_start_bytes": max(r["peak_rss_over_start_bytes"] for r in runs),
                      "pct_of_floor": _median_range([r["pct_of_floor"] for r in runs]),
                      "gemm_peak_flops": _median_range([r["gemm_peak_flops"] for r in runs])}
    if "inpo" in summary and "trl" in summary:
        ours, trl = summary["inpo"], summary["trl"]
        summary["speedup_vs_trl"] = ours["tokens_per_s"]["median"] / trl["tokens_per_s"]["median"]
        summary["memory_vs_trl"] = ours["peak_rss_over_start_bytes"] / trl["peak_rss_over_start_bytes"]
    _record(args.out or RESULTS / "real-step.jsonl",
            {"bench": "real-step", "model": MODEL, "smoke": args.smoke, "pairs": args.pairs, "rounds": args.rounds,
             "threads": args.threads, "load_before": load_before, "summary": summary, "runs": got})
    return 0


# ---- (b) generation: vLLM CPU vs HF generate ----------------------------------------------------------------------

def _prompts(n: int) -> list[str]:
    prompts = [p for p in PROMPTS.read_text().splitlines() if p.strip()]
    return (prompts * (n // len(prompts) + 1))[:n]


def generation_worker(args) -> dict:
    from inpo.data.tokenizer import load_tokenizer
    from inpo.models import resolve_model

    torch.set_num_threads(args.threads)
    tok, prompts = load_tokenizer(MODEL), _prompts(args.prompts)
    t0 = time.perf_counter()
    if args.system == "vllm":
        from inpo.generation.vllm import VLLMSampler

        # SmolLM2's 8192-token context does not fit the sampler's default CPU KV cache: cap the model length
        sampler = VLLMSampler(resolve_model(MODEL), tok, max_new_tokens=args.max_new_tokens, max_model_len=2048,
                              kv_cache_memory_bytes=512 << 20)
    else:
        from inpo.generation import HFSampler
        from inpo.train.model import load_policy

        sampler = HFSampler(load_policy(MODEL).eval(), tok, max_new_tokens=args.max_new_tokens)
    start_s = time.perf_counter() - t0
    sampler.sample(prompts[:1], 1, seed=args.seed + 1)  # warm-up call, not timed
    t0 = time.perf_counter()
    sampler.sample(prompts, args.k, seed=args.seed)
    gen_s = time.perf_counter() - t0
    new_tokens = sampler.last_stats["new_tokens"]
    sampler.close()
    return {"system": args.system, "start_s": start_s, "generate_s": gen_s, "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / gen_s, "peak_rss_bytes": _peak_rss_bytes(), "threads": torch.get_num_threads(),
            "vllm_cpu_omp_threads_bind": getattr(sampler, "cpu_omp_binding", None)}


def generation_bench(args) -> int:
    from inpo._optional import available

    systems = [s for s in args.systems.split(",") if s != "vllm" or available("vllm")]
    if len(systems) < len(args.systems.split(",")):
        print("[bench.real] vllm is not importable here: run with .venv-vllm/bin/python to include it",
              file=sys.stderr)
    common = ["generation", "--prompts", str(args.prompts), "--k", str(args.k), "--max-new-tokens",
              str(args.max_new_tokens), "--threads", str(args.threads), "--seed", str(args.seed)]
    load_before = list(os.getloadavg())
    got = _interleave(systems, args.rounds, lambda s: common + ["--worker", s])
    summary = {s: {k: _median_range([r[k] for r in runs]) for k in ("tokens_per_s", "start_s", "generate_s")}
               for s, runs in got.items()}
    _record(args.out or RESULTS / "real-generation.jsonl",
            {"bench": "real-generation", "model": MODEL, "smoke": args.smoke, "prompts": args.prompts, "k": args.k,
             "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "threads": args.threads,
             "load_before": load_before, "summary": summary, "runs": got})
    return 0


# ---- (c) one online INPO iteration ----------------------------------------------------------------------------------

PHASES = ("generate_s", "rank_s", "precompute_s", "train_s")


def iteration_worker(args) -> dict:
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="inpo-bench-real-iter-"))
    try:
        return _iteration_run(args, out)
    finally:
        shutil.rmtree(out)  # this worker's own temp dir (checkpoints: GBs)


def _iteration_run(args, out: Path) -> dict:
    from inpo._optional import available

    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(_prompts(args.prompts)) + "\n")
    cmd = [sys.executable, "-m", "inpo", "train", "--model", MODEL, "--prompts", str(prompts), "--iterations", "1",
           "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens), "--objective", "inpo",
           "--sampler", args.system, "--evaluate", "false", "--threads", str(args.threads), "--progress", "false",
           "--output", str(out / "run")]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    total = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{res.stderr[-3000:]}")
    recs = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    it = next(r for r in recs if r.get("kind") == "iteration")
    n_train = len((out / "run" / "iter_000" / "samples.jsonl").read_text().splitlines())  # the held-out 20 % aside
    planned = n_train * args.k * args.max_new_tokens  # what sampler: auto weighs (iterations x prompts x k x new)
    phases = {k: it.get(k) for k in PHASES}
    phases["export_s"] = it["wall_s"] - sum(v or 0.0 for v in phases.values())  # checkpoint + iterate export
    return {"system": args.system, "wall_s": it["wall_s"], "process_s": total, **phases, "pairs": it.get("pairs"),
            "planned_new_tokens": planned, "sampler_line": _sampler_line(res.stdout + res.stderr),
            "threads": args.threads, "vllm_importable": available("vllm")}


def _sampler_line(output: str) -> str | None:
    """The run's own line saying which sampler ``auto`` picked and why (None for an explicit --sampler)."""
    return next((line.strip() for line in output.splitlines() if "[inpo] sampler auto:" in line), None)


def iteration_bench(args) -> int:
    systems = args.systems.split(",")
    common = ["iteration", "--prompts", str(args.prompts), "--k", str(args.k), "--max-new-tokens",
              str(args.max_new_tokens), "--threads", str(args.threads)]
    load_before = list(os.getloadavg())
    got = _interleave(systems, args.rounds, lambda s: common + ["--worker", s])
    summary = {s: {k: _median_range([r[k] for r in runs]) for k in ("wall_s", *PHASES, "export_s")}
               for s, runs in got.items()}
    for s, runs in got.items():
        summary[s]["sampler_line"] = runs[0]["sampler_line"]
    _record(args.out or RESULTS / "real-iteration.jsonl",
            {"bench": "real-iteration", "model": MODEL, "smoke": args.smoke, "prompts": args.prompts, "k": args.k,
             "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "threads": args.threads,
             "load_before": load_before, "summary": summary, "runs": got})
    return 0


# ---- command line ---------------------------------------------------------------------------------------------------

SMOKE = {"step": dict(pairs=2, steps=1, rounds=1, trl_batch=2),
         "generation": dict(prompts=2, k=2, max_new_tokens=8, rounds=1),
         "iteration": dict(prompts=5, k=2, max_new_tokens=8, rounds=1)}
DEFAULTS = {"step": dict(pairs=8, steps=2, rounds=3, systems="inpo,trl", trl_batch=4),
            "generation": dict(prompts=16, k=4, max_new_tokens=128, rounds=2, systems="hf,vllm"),
            "iteration": dict(prompts=16, k=4, max_new_tokens=64, rounds=1, systems="auto")}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=("step", "generation", "iteration", "pairs"))
    ap.add_argument("--smoke", action="store_true", help="seconds-long sizes (tests); not a measurement")
    ap.add_argument("--systems", default=None, help="step: inpo,inpo-ckpt,trl; generation: hf,vllm; iteration: "
                                                    "auto,hf,vllm (the --sampler of the run)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (each system once per round)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--pairs", type=int, default=None, help="step: pairs per optimiser step")
    ap.add_argument("--steps", type=int, default=None, help="step: timed steps per process (after one warm-up)")
    ap.add_argument("--max-tokens", type=int, default=4096, help="step: inpo's micro-batch token budget")
    ap.add_argument("--trl-batch", type=int, default=None, help="step: TRL per_device_train_batch_size (default 4; "
                                                                "accumulation makes up --pairs)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="results JSONL (default bench/results/real-<bench>.jsonl)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for k, v in {**DEFAULTS.get(args.bench, {}), **(SMOKE.get(args.bench, {}) if args.smoke else {})}.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.bench == "pairs":
        args.max_new_tokens = args.max_new_tokens or 320
        return make_pairs(args)
    problem = output_problem("python -m bench.real", files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.worker:
        args.system = args.worker
        result = {"step": step_worker, "generation": generation_worker, "iteration": iteration_worker}[args.bench](args)
        print(json.dumps(result))
        return 0
    return {"step": step_bench, "generation": generation_bench, "iteration": iteration_bench}[args.bench](args)


if __name__ == "__main__":
    raise SystemExit(main())
