"""The vLLM sampler's correctness and lifetime numbers on this machine (the README "Generation" section quotes them).

Run in the real-engine venv (``make test-vllm`` builds it)::

    .venv-vllm/bin/python -m bench.vllm_sampler [--prompts 20] [--k 8] [--out bench/results/vllm/sampler-cpu.jsonl]

On the embedded default policy (fp32), one engine: start-up time; distinct texts among prompts × k samples for
HF, for this sampler and for the old per-call seed (``SamplingParams(n=k, seed=s)`` on the same engine); summed
log-prob differences to the trainer's ``precompute_logps`` on the sampled tokens before and after an in-place
weight update (π_{t+1} = π_t + noise); the update's and the shutdown's wall time. One JSON line per run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench.lib.outputs import output_problem


def _trainer_logps(model, tok, prompts, k, token_ids):
    from inpo.data.tokenizer import encode_prompt
    from inpo.train.loop import precompute_logps

    ids = [encode_prompt(tok, p) for p in prompts]
    seqs = [(ids[r // k], token_ids[r]) for r in range(len(token_ids))]
    return precompute_logps(model, seqs, max_tokens=16384, impl="torch", pairwise=False)


def _distinct(groups) -> int:
    return len({y for g in groups for y in g})


def main(argv=None) -> dict:
    from inpo.data.prompts import default_prompts
    from inpo.data.tokenizer import default_tokenizer, encode_prompt
    from inpo.generation import HFSampler
    from inpo.generation.vllm import VLLMSampler
    from inpo.utils.record import append_jsonl, environment_info
    from inpo.train.model import load_policy

    ap = argparse.ArgumentParser(prog="python -m bench.vllm_sampler")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--updates", type=int, default=5, help="timed in-place weight updates")
    ap.add_argument("--out", default="bench/results/vllm/sampler-cpu.jsonl")
    args = ap.parse_args(argv)
    problem = output_problem("python -m bench.vllm_sampler", files={"--out": args.out})
    if problem:
        raise SystemExit(problem)

    import vllm

    torch.set_num_threads(1)
    tok = default_tokenizer()
    policy = load_policy(None, tokenizer=tok).eval()
    prompts = default_prompts("eval", n=args.prompts, seed=0)
    k, seed = args.k, args.seed
    rec = {"bench": "vllm_sampler", "model": "default", "prompts": len(prompts), "k": k,
           "max_new_tokens": args.max_new_tokens, "vllm": vllm.__version__, **environment_info("cpu")}

    hf = HFSampler(policy, tok, max_new_tokens=args.max_new_tokens)
    rec["distinct_hf"] = _distinct(hf.sample(prompts, k, seed=seed))
    rec["hf_tokens_per_s"] = hf.last_stats["tokens_per_s"]

    s = VLLMSampler(policy, tok, max_new_tokens=args.max_new_tokens, kv_cache_memory_bytes=256 << 20)
    rec["startup_s"], rec["dtype"] = s.startup_s, s.dtype
    s.sample(prompts[:2], 1, seed=seed)  # warm-up
    out = s.sample(prompts, k, seed=seed)
    rec["distinct_vllm"] = _distinct(out)
    rec["vllm_tokens_per_s"] = s.last_stats["tokens_per_s"]
    diff = (torch.tensor(s.last_logps) - _trainer_logps(policy, tok, prompts, k, s.last_token_ids)).abs()
    rec["logp_absdiff_max"], rec["logp_absdiff_mean"] = diff.max().item(), diff.mean().item()

    # the old behaviour, on the same engine: one seed per call, vLLM seeds sample j with seed + j for every prompt
    params = vllm.SamplingParams(n=k, seed=seed, max_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                                 top_k=0, stop_token_ids=s.stop_ids)
    old = s.llm.generate([{"prompt_token_ids": encode_prompt(tok, p)} for p in prompts], params, use_tqdm=False)
    rec["distinct_vllm_one_seed_per_call"] = len({c.text for o in old for c in o.outputs})

    nxt = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in nxt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    times = []
    for i in range(args.updates):
        t0 = time.perf_counter()
        s.set_policy(nxt if i % 2 == 0 else policy)
        times.append(time.perf_counter() - t0)
    s.set_policy(nxt)
    rec["update_s_median"], rec["update_s_min"], rec["update_s_max"] = statistics.median(times), min(times), max(times)
    s.sample(prompts, k, seed=seed + 1)
    got = torch.tensor(s.last_logps)
    diff = (got - _trainer_logps(nxt, tok, prompts, k, s.last_token_ids)).abs()
    rec["logp_absdiff_max_after_update"], rec["logp_absdiff_mean_after_update"] = diff.max().item(), diff.mean().item()
    stale = (got - _trainer_logps(policy, tok, prompts, k, s.last_token_ids)).abs()
    rec["logp_absdiff_mean_vs_old_weights"] = stale.mean().item()
    t0 = time.perf_counter()
    s.close()
    rec["close_s"] = time.perf_counter() - t0
    append_jsonl(args.out, rec)
    print({k: v for k, v in rec.items() if not isinstance(v, str) or k in ("dtype",)})
    return rec


if __name__ == "__main__":  # vLLM spawns its engine and worker processes: they re-import the main module
    main()
