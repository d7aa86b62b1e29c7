"""Position bias of an LLM judge (``--oracle judge:DIR``) before averaging, on real answers.

    python -m bench.judge_bias [--judge smollm2] [--policy smollm2] [--n 48] [--out bench/results/judge-bias.jsonl]

The policy answers ``--n`` of the shipped prompts (``inpo/assets/real_prompts.txt``, a seeded subset) twice each, as
``make train-real`` samples them (HF generate, ``--temperature``, ``--max-new-tokens``); the judge reads every pair
in both orders. Recorded, each mean with a 95 % bootstrap interval over pairs:

* ``first_position_rate``: mean over pairs of ½·(p(a, b) + p(b, a)), the raw probability that the response shown
  first wins, averaged over the two orders -- ½ for a judge without position bias;
* ``first_wins_both_orders`` / ``second_wins_both_orders``: pairs whose raw verdict follows the position, not the
  answer; ``order_consistent``: pairs whose raw verdict names the same answer in both orders;
* ``decisiveness``: mean |P(a ≻ b) − ½| after averaging (0: the averaged judge says nothing);
* ``sanity_accuracy``: on hand-written pairs of a right and a plainly wrong answer (:data:`SANITY`), the share where
  the averaged judge prefers the right one, and its mean P;
* ``format_agreement``: on the sampled pairs, the share where the averaged judge and the format oracle
  (``--oracle format``) pick the same answer (pairs the format oracle calls a tie left out);
* ``seconds_per_forward`` with the load (``os.getloadavg``) before and after: a cost on this machine, not a
  benchmark.

One JSON line goes to ``--out`` with the environment (device, versions, commit), the command and the settings.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time

import numpy as np

from bench.lib.outputs import output_problem
from inpo.data.prompts import load_prompts, real_prompts_path
from inpo.eval import bootstrap_ci
from inpo.oracles import FormatOracle, JudgeOracle
from inpo.oracles.judge import ANSWER_PREFIX, LABELS
from inpo.utils.record import append_jsonl, environment_info

PROG = "python -m bench.judge_bias"

# (question, right answer, plainly wrong answer): a judge that reads the answers at all gets these right.
SANITY = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 7 times 8?", "7 times 8 is 56.", "7 times 8 is 15."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "There are 100 minutes in an hour."),
    ("What color is a clear daytime sky?", "A clear daytime sky is blue.", "A clear daytime sky is green."),
    ("What do bees make?", "Bees make honey from the nectar of flowers.", "Bees make milk from grass."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level.",
     "Water boils at 10 degrees Celsius at sea level."),
    ("Name a mammal that lives in the ocean.", "The blue whale is a mammal that lives in the ocean.",
     "The eagle is a mammal that lives in the ocean."),
    ("Translate 'good morning' into French.", "'Good morning' in French is 'bonjour'.",
     "'Good morning' in French is 'gracias'."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system.",
     "Mercury is the largest planet in the solar system."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has three legs."),
    ("Write a Python expression that adds 2 and 3.", "`2 + 3`", "`2 - 3`"),
    ("Is the review 'The food was cold and the service was slow' positive or negative?",
     "The review is negative: it complains about cold food and slow service.",
     "The review is positive: it praises the food and the service."),
]


def _interval(x: np.ndarray, seed: int) -> list[float]:
    lo, hi = bootstrap_ci(x, n_bootstrap=2000, seed=seed)
    return [round(float(x.mean()), 4), round(lo, 4), round(hi, 4)]


def sample_pairs(policy: str, prompts: list, *, max_new_tokens: int, temperature: float, seed: int):
    """Two answers per prompt from ``policy`` (HF generate), as the online loop samples them."""
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.data.tokenizer import load_tokenizer
    from inpo.generation.hf import HFSampler
    from inpo.models import resolve_model

    folder = resolve_model(policy)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    sampler = HFSampler(model, load_tokenizer(folder), max_new_tokens=max_new_tokens, temperature=temperature)
    return sampler.sample(prompts, 2, seed=seed)


def bias_stats(judge: JudgeOracle, prompts: list, a: list[str], b: list[str], seed: int) -> dict:
    """The module docstring's position statistics of ``judge`` on the pairs (a_i, b_i)."""
    p_ab, p_ba = judge.raw_prob(prompts, a, b), judge.raw_prob(prompts, b, a)
    avg = 0.5 * (1.0 + (p_ab - p_ba))
    return {"pairs": len(a),
            "first_position_rate": _interval(0.5 * (p_ab + p_ba), seed),
            "first_wins_both_orders": _interval(((p_ab > 0.5) & (p_ba > 0.5)).astype(float), seed),
            "second_wins_both_orders": _interval(((p_ab < 0.5) & (p_ba < 0.5)).astype(float), seed),
            "order_consistent": _interval(((p_ab > 0.5) != (p_ba > 0.5)).astype(float), seed),
            "decisiveness": _interval(np.abs(avg - 0.5), seed), "averaged": avg}


def _format_agreement(prompts, a, b, averaged: np.ndarray, seed: int) -> dict:
    fmt = FormatOracle().prob_batch(prompts, a, b)
    decided = np.abs(fmt - 0.5) > 1e-9
    if not decided.any():
        return {"format_agreement": None, "format_decided_pairs": 0}
    agree = ((averaged > 0.5) == (fmt > 0.5))[decided].astype(float)
    return {"format_agreement": _interval(agree, seed), "format_decided_pairs": int(decided.sum())}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", default="smollm2", help="the judge: a chat-model folder or a name (default smollm2)")
    ap.add_argument("--policy", default="smollm2", help="the model whose answers are judged (default smollm2)")
    ap.add_argument("--n", type=int, default=48, help="prompts (one sampled pair each)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--batch-size", type=int, default=8, help="judge forwards per batch")
    ap.add_argument("--answer-prefix", default=ANSWER_PREFIX, help="the start of the judge's answer, before the label")
    ap.add_argument("--labels", default=",".join(LABELS), help="the two labels, comma-separated (default ' A, B')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/judge-bias.jsonl")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = output_problem(PROG, files={"--out": args.out})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    pool = load_prompts(real_prompts_path())
    if not 1 <= args.n <= len(pool):
        print(f"{PROG}: --n must be in [1, {len(pool)}] (the shipped prompts), got {args.n}", file=sys.stderr)
        return 2
    load = [os.getloadavg()[0]]
    prompts = [pool[i] for i in sorted(random.Random(args.seed).sample(range(len(pool)), args.n))]
    answers = sample_pairs(args.policy, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed)
    a, b = [y[0] for y in answers], [y[1] for y in answers]
    judge = JudgeOracle(args.judge, batch_size=args.batch_size, answer_prefix=args.answer_prefix,
                        labels=tuple(args.labels.split(",")))
    t0, f0 = time.perf_counter(), judge.forwards
    stats = bias_stats(judge, prompts, a, b, args.seed)
    seconds = (time.perf_counter() - t0) / max(1, judge.forwards - f0)
    stats.update(_format_agreement(prompts, a, b, stats.pop("averaged"), args.seed))
    q, good, bad = (list(col) for col in zip(*SANITY))
    right = judge.prob_batch(q, good, bad)
    load.append(os.getloadavg()[0])
    command = PROG + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    rec = {"bench": "judge_bias", **environment_info("cpu"), "command": command,
           "judge": args.judge, "policy": args.policy, "n": args.n, "max_new_tokens": args.max_new_tokens,
           "temperature": args.temperature, "seed": args.seed, "template": judge.template,
           "answer_prefix": judge.answer_prefix, "labels": args.labels.split(","), **stats,
           "sanity_pairs": len(SANITY), "sanity_accuracy": _interval((right > 0.5).astype(float), args.seed),
           "sanity_mean_p": _interval(right, args.seed), "seconds_per_forward": round(seconds, 3),
           "torch_threads": _threads(), "loadavg_1m": [round(x, 2) for x in load],
           "example": {"prompt": prompts[0], "a": a[0], "b": b[0]}}
    append_jsonl(args.out, rec)
    for key in ("first_position_rate", "first_wins_both_orders", "second_wins_both_orders", "order_consistent",
                "decisiveness", "format_agreement", "sanity_accuracy", "sanity_mean_p"):
        print(f"{key:>24}: {rec[key]}")
    print(f"{'seconds_per_forward':>24}: {rec['seconds_per_forward']} (load {rec['loadavg_1m']})  -> {args.out}")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
