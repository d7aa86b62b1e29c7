"""Generation tokens/s on this CPU: Hugging Face ``generate`` vs vLLM (CPU build), same policy, prompts and sampling.

The policy is the step bench's CPU-scale model (``cpu-22m``: 21.6 M parameters, 32k vocabulary, random init from a
seed, fp32), saved once to a temporary directory that both engines load. Prompts: ``--prompts`` token-id prompts of
variable length (uniform in [16, 128] tokens); ``--k`` samples each; ``--max-new-tokens`` new tokens per sample
with eos ignored (a random-init policy would stop at random places: fixed lengths make the token counts equal).
Sampling: temperature 1, top-p 1, no top-k, fp32 on both.

* ``hf``: ``model.generate`` on all prompt×sample rows at once (``--hf-batch`` rows per call), left-padded, KV cache,
  sdpa, the way ``inpo.generation.hf.HFSampler`` runs it.
* ``vllm``: one ``vllm.LLM(dtype="float32", enforce_eager=True, skip_tokenizer_init=True)`` engine for the whole
  run, token-id prompts, one ``SamplingParams(n=k, seed=seed + i)`` per prompt (distinct seeds: see issue 14).
  Engine start-up is timed apart (``engine_start_s``) and so is the first (warm-up) call.

Timing: one warm-up call each, then ``--reps`` rounds running hf then vllm (interleaved), median and a bootstrap 90%
interval of the median, ``os.getloadavg()`` and thread counts recorded. Each record also counts distinct samples
(vLLM's per-prompt seeds must give ``prompts·k`` distinct ones) and the ``break_even_rows``: how many sampled rows
an iteration must generate before vLLM's engine start-up is paid back (None when HF is at least as fast).

Needs vLLM's CPU build, in its own venv (the ENV-NOTES recipe, ``make test-vllm``'s venv):
``.venv-vllm/bin/python -m bench.generation``. Without vllm it times HF alone and says so.
Records append to ``bench/results/generation-cpu.jsonl``; ``python -m bench.report`` shows them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.lib.outputs import output_problem
from bench.lib.shapes import MODEL_SHAPES, model_config
from bench.step_cpu import bootstrap_median_ci
from inpo.utils.record import append_jsonl, environment_info

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "generation-cpu.jsonl"
SAMPLERS = ("hf", "vllm")


def make_prompts(n: int, vocab_size: int, seed: int, *, min_len: int = 16, max_len: int = 128) -> list[list[int]]:
    """``n`` token-id prompts of uniform random length in [min_len, max_len] (ids 4.. avoid special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab_size, (int(torch.randint(min_len, max_len + 1, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def save_policy(model_name: str, path: Path, seed: int) -> None:
    """The CPU-scale policy, random-init from ``seed``, fp32, saved as a transformers directory."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = model_config(model_name)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 2, 1, 0
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(str(path), safe_serialization=True)


class HFGen:
    def __init__(self, path: Path, max_new_tokens: int, batch: int):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        self.max_new_tokens, self.batch = max_new_tokens, batch

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], k: int, seed: int) -> list[list[int]]:
        rows = [p for p in prompts for _ in range(k)]
        out: list[list[int]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for s in range(0, len(rows), self.batch):
                chunk = rows[s:s + self.batch]
                width = max(len(r) for r in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for i, r in enumerate(chunk):  # left padding
                    ids[i, width - len(r):] = torch.tensor(r)
                    mask[i, width - len(r):] = 1
                gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                          top_p=1.0, top_k=0, max_new_tokens=self.max_new_tokens,
                                          min_new_tokens=self.max_new_tokens, pad_token_id=0)
                out += gen[:, width:].tolist()
        return out


class VLLMGen:
    def __init__(self, path: Path, max_new_tokens: int, max_model_len: int):
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM(model=str(path), dtype="float32", enforce_eager=True, skip_tokenizer_init=True, seed=0,
                            max_model_len=max_model_len)
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: list[list[int]], k: int, seed: int) -> list[list[int]]:
        params = [self.vllm.SamplingParams(n=k, seed=seed + i, max_tokens=self.max_new_tokens,
                                           min_tokens=self.max_new_tokens, ignore_eos=True, temperature=1.0,
                                           top_p=1.0, top_k=-1, detokenize=False) for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(c.token_ids) for o in outs for c in o.outputs]

    def close(self) -> None:
        shutdown = getattr(getattr(self.llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(args, argv: list[str]) -> list[dict]:
    torch.set_num_threads(args.threads)
    vocab = MODEL_SHAPES[args.model]["vocab_size"]
    prompts = make_prompts(args.prompts, vocab, args.seed)
    env = environment_info("cpu")
    samplers = list(args.samplers)
    try:
        import vllm
        env["vllm"] = vllm.__version__
    except ImportError:
        env["vllm"] = None
        if "vllm" in samplers:
            print("[generation] vllm is not installed in this interpreter: timing hf only (build the CPU vLLM venv, "
                  "see ENV-NOTES / make test-vllm)", file=sys.stderr)
            samplers.remove("vllm")
    with tempfile.TemporaryDirectory(prefix="inpo-gen-bench-") as tmp:
        path = Path(tmp) / "policy"
        save_policy(args.model, path, args.seed)
        gens, start_s = {}, {}
        for s in samplers:
            t0 = time.perf_counter()
            gens[s] = HFGen(path, args.max_new_tokens, args.hf_batch) if s == "hf" else VLLMGen(
                path, args.max_new_tokens, max(len(p) for p in prompts) + args.max_new_tokens + 8)
            start_s[s] = time.perf_counter() - t0
        first_s, distinct = {}, {}
        for s in samplers:  # warm-up call (vLLM: first-batch costs; HF: allocator growth)
            out, first_s[s] = _timed(lambda s=s: gens[s].generate(prompts, args.k, args.seed))
            distinct[s] = len({tuple(r) for r in out})
            if any(len(r) != args.max_new_tokens for r in out):
                raise RuntimeError(f"{s} returned samples of lengths {sorted({len(r) for r in out})}, expected "
                                   f"{args.max_new_tokens} each (eos must be ignored)")
        samples = {s: [] for s in samplers}
        load = [os.getloadavg()[0]]
        for rep in range(args.reps):
            for s in samplers:
                _, dt = _timed(lambda s=s, rep=rep: gens[s].generate(prompts, args.k, args.seed + 1000 * (rep + 1)))
                samples[s].append(dt)
            load.append(os.getloadavg()[0])
        for g in gens.values():
            if hasattr(g, "close"):
                g.close()
    rows = args.prompts * args.k
    new_tokens = rows * args.max_new_tokens
    cmd = "python -m bench.generation " + shlex.join(argv)
    records = []
    med = {s: statistics.median(v) for s, v in samples.items()}
    for s in samplers:
        lo, hi = bootstrap_median_ci(samples[s])
        rec = {**env, "bench": "generation-cpu", "sampler": s, "model": args.model, "vocab_size": vocab, "prompts": args.prompts, "k": args.k,
               "rows": rows, "max_new_tokens": args.max_new_tokens, "prompt_tokens": sum(len(p) for p in prompts) * args.k,
               "new_tokens": new_tokens, "median_s": med[s], "ci90_s": [lo, hi],
               "samples_s": [round(x, 3) for x in samples[s]], "tokens_per_s": new_tokens / med[s],
               "tokens_per_s_ci90": [new_tokens / hi, new_tokens / lo], "engine_start_s": start_s[s],
               "first_call_s": first_s[s], "distinct_samples": distinct[s], "dtype": "float32",
               "sampling": "temperature=1 top_p=1 top_k=off, eos ignored", "torch_threads": args.threads,
               "hf_batch": args.hf_batch if s == "hf" else None, "reps": args.reps, "interleaved": True,
               "loadavg_1m": [round(x, 2) for x in load], "vllm_cpu_omp_threads_bind":
                   os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), "command": cmd}
        records.append(rec)
    if "hf" in med and "vllm" in med:
        per_row = {s: med[s] / rows for s in med}
        for r in records:
            r["speedup_vs_hf"] = med["hf"] / med[r["sampler"]]
            gain = per_row["hf"] - per_row["vllm"]
            extra_start = start_s["vllm"] + first_s["vllm"] - med["vllm"] - (start_s["hf"] + first_s["hf"] - med["hf"])
            r["break_even_rows"] = (max(0.0, extra_start) / gain) if gain > 0 else None
    n_params = sum(p.numel() for p in _param_shapes(model_config(args.model)))
    for r in records:
        r["params"] = n_params
        print(_fmt(r))
    return records


def _param_shapes(cfg):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return list(LlamaForCausalLM(cfg).parameters())


def _fmt(r: dict) -> str:
    extra = f"  {r['speedup_vs_hf']:.2f}x hf" if r.get("speedup_vs_hf") else ""
    return (f"[generation] {r['sampler']:<5} {r['median_s']:8.2f} s ({r['ci90_s'][0]:.2f}–{r['ci90_s'][1]:.2f}) for "
            f"{r['new_tokens']} new tokens: {r['tokens_per_s']:8.1f} tok/s; start {r['engine_start_s']:.1f} s, first "
            f"call {r['first_call_s']:.1f} s; {r['distinct_samples']}/{r['rows']} distinct{extra}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cpu-22m", help="a bench.lib.shapes.MODEL_SHAPES key (default cpu-22m)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=64, help="rows per HF generate call (HFSampler's default 64)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--samplers", default="hf,vllm", help=f"comma list from {SAMPLERS}")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the HF side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    problems = []
    if not args.samplers or any(s not in SAMPLERS for s in args.samplers):
        problems.append(f"--samplers must be a comma list from {SAMPLERS}, got {','.join(args.samplers)!r}")
    if args.model not in MODEL_SHAPES:
        problems.append(f"--model must be one of {sorted(MODEL_SHAPES)}, got {args.model!r}")
    for name in ("prompts", "k", "max_new_tokens", "hf_batch", "reps", "threads"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if problems:
        print("python -m bench.generation: " + "; ".join(problems), file=sys.stderr)
        return 2
    problem = output_problem("python -m bench.generation", files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    records = run(args, argv)
    append_jsonl(args.out, records)
    print(f"[generation] appended {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
