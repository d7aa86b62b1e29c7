"""Win-rate of a policy against a baseline under a preference oracle, with a bootstrap CI over prompts.

``inpo eval --policy DIR [--baseline DIR | --baseline-default] [--prompts auto|default-eval|default-train|FILE]
[--oracle synthetic|format|reward:PATH|pairwise:PATH|judge:PATH] [--n 200] [--k 1] [--seed 0] [--exploitability] [--json OUT]``

Evaluation follows the run that produced the policy: without ``--baseline`` the policy is compared with its
recorded starting model (``inpo_origin.json`` beside an export, or the run's ``config.yaml`` above a checkpoint /
iterate folder) -- the user's ``--model``, or the embedded π_ref for an embedded run -- and ``--prompts auto``
takes that run's held-out prompts (its ``eval_prompts`` file, or the fixed held-out split of its ``prompts``
file), with its chat-template choice and ``max_prompt_length``. A policy with no record needs ``--baseline DIR``
or ``--baseline-default``: nothing is trained behind the user's back.

Each prompt's score is the oracle's P(policy response ≻ baseline response) averaged over ``k`` sampled
pairs (``--hard``: the oracle's decision, 1 / 0 and ½ for a tie, instead of the probability). The
win-rate is the mean over prompts; its 95 % CI is the percentile bootstrap over prompts (seeded). Both
models sample with the same seed (common random numbers), so a policy identical to its baseline
scores exactly ½.

``--exploitability`` also reports the policy's exploitability 2·max_y′ E_{y∼π} P(y′ ≻ y) − 1 (0 at a Nash policy;
:mod:`inpo.exploitability`) from its ``k`` samples per prompt (``k`` defaults to 8 then): the cross-fit estimate
with its bootstrap CI over prompts, the plug-in as an upper bracket and, for the synthetic oracle, the pooled
policy's value; against the best response in the pool of both models' samples (any oracle), and, for the synthetic
oracle, over its whole feature space and its style-only part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from inpo.data.chat import Truncation, encode_prompt
from inpo.data.prompts import default_prompts, load_prompts, split_prompts
from inpo.data.tokenizer import resolve_tokenizer
from inpo.exploitability import exploitability
from inpo.generation import BACKENDS, SamplingPlan, make_sampler
from inpo.models import resolve_model
from inpo.oracles import TIE, PreferenceOracle, make_oracle
from inpo.paths import check_writable_path
from inpo.train.config import TrainConfig, bootstrap_bytes
from inpo.train.loop import resolve_device
from inpo.train.model import load_policy
from inpo.utils.io import atomic_write_json
from inpo.utils.memory import check_fits
from inpo.utils.model_folder import first_non_finite
from inpo.utils.record import environment_info

__all__ = ["WinRate", "win_rate", "bootstrap_ci", "evaluate", "find_origin", "run_config", "origin_record", "ORIGIN_FILE",
           "main"]


@dataclass(frozen=True)
class WinRate:
    """Mean P(policy ≻ baseline) over ``n`` prompts, its 95 % bootstrap CI and the oracle queries spent."""

    win_rate: float
    ci_low: float
    ci_high: float
    n: int
    queries: int

    def __str__(self) -> str:
        return f"{self.win_rate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] (n={self.n})"


def bootstrap_ci(scores: Sequence[float], *, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``scores`` (resampling the scores with replacement)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"scores must be a non-empty 1-d sequence, got shape {x.shape}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive int, got {n_bootstrap!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    step = max(1, 2_000_000 // x.size)  # bound the index matrix to ~16 MB
    for s in range(0, n_bootstrap, step):
        m = min(step, n_bootstrap - s)
        means[s:s + m] = x[rng.integers(0, x.size, size=(m, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def win_rate(prompts: Sequence[str], policy_responses: Sequence, baseline_responses: Sequence, oracle, *,
             n_bootstrap: int = 1000, seed: int = 0, hard: bool = False) -> WinRate:
    """Mean P(policy ≻ baseline) over prompts with a percentile-bootstrap 95 % CI over prompts.

    ``policy_responses[i]`` / ``baseline_responses[i]`` is one response (str) or a list of ``k``
    responses for ``prompts[i]`` (compared position by position, averaged per prompt). ``hard=True``
    scores the oracle's decision (ties count ½) instead of its probability.
    """

    if not isinstance(oracle, PreferenceOracle):
        raise TypeError(f"oracle must be a PreferenceOracle, got {type(oracle).__name__}")
    n = len(prompts)
    if n == 0:
        raise ValueError("prompts is empty: nothing to evaluate")
    if len(policy_responses) != n or len(baseline_responses) != n:
        raise ValueError(f"need one policy and one baseline entry per prompt: got {n} prompts, "
                         f"{len(policy_responses)} policy and {len(baseline_responses)} baseline entries")
    flat_x, flat_a, flat_b, owner = [], [], [], []
    for i, (x, a, b) in enumerate(zip(prompts, policy_responses, baseline_responses)):
        a = [a] if isinstance(a, str) else list(a)
        b = [b] if isinstance(b, str) else list(b)
        if len(a) != len(b) or not a:
            raise ValueError(f"prompt {i}: policy and baseline need the same number (>= 1) of responses, "
                             f"got {len(a)} and {len(b)}")
        flat_x += [x] * len(a)
        flat_a += a
        flat_b += b
        owner += [i] * len(a)
    q0 = oracle.queries
    p = oracle.prob_batch(flat_x, flat_a, flat_b)
    if hard:
        d = oracle.decide(p).astype(np.float64)
        p = np.where(d == TIE, 0.5, d)
    owner = np.asarray(owner)
    scores = np.bincount(owner, weights=p, minlength=n) / np.bincount(owner, minlength=n)
    lo, hi = bootstrap_ci(scores, n_bootstrap=n_bootstrap, seed=seed)
    return WinRate(float(scores.mean()), lo, hi, n, oracle.queries - q0)


def evaluate(policy_model, baseline_model, tokenizer, prompts: Sequence, oracle, *, max_new_tokens: int = 32,
             temperature: float = 1.0, seed: int = 0, n_bootstrap: int = 1000, k: int = 1, batch_size: int = 64,
             hard: bool = False, return_responses: bool = False, max_prompt_length: int | None = None,
             sampler: str = "auto", sampler_dtype: str = "policy"):
    """Sample ``k`` responses per prompt from each model (same seed) and score them with :func:`win_rate`.

    ``sampler`` is the backend (``hf`` | ``vllm`` | ``auto``, :func:`inpo.generation.make_sampler`): one sampler
    (one vLLM engine) samples the policy, then is pointed at the baseline. With ``return_responses=True`` returns
    ``(WinRate, policy_responses, baseline_responses)``.
    """
    if not prompts:
        raise ValueError("prompts is empty: nothing to evaluate")
    prompts = list(prompts)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
              max_prompt_length=max_prompt_length)
    lengths = [len(Truncation(max_prompt_length=max_prompt_length).prompt(encode_prompt(tokenizer, p)))
               for p in prompts]
    plan = SamplingPlan.of([(lengths, k), (lengths, k)], max_new_tokens, weight_updates=1)  # what `auto` weighs
    with make_sampler(sampler, policy_model, tokenizer, dtype=sampler_dtype, plan=plan, **kw) as s:
        ours = s.sample(prompts, k, seed=seed)
        s.set_policy(baseline_model)
        theirs = s.sample(prompts, k, seed=seed)
    result = win_rate(prompts, ours, theirs, oracle, n_bootstrap=n_bootstrap, seed=seed, hard=hard)
    return (result, ours, theirs) if return_responses else result


# ----------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="inpo eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="local model directory, or 'default' for the embedded π_ref")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--baseline", help="local model directory of the baseline (default: the policy's recorded "
                                         "starting model)")
    base.add_argument("--baseline-default", action="store_true",
                      help="compare against the embedded default π_ref")
    ap.add_argument("--prompts", default="auto",
                    help="auto (the policy's run's held-out prompts, else default-eval) | default-eval | "
                         "default-train | a .txt / .jsonl file")
    ap.add_argument("--no-chat-template", action="store_true",
                    help="plain text, no chat template (a base model; default: as the policy's run did)")
    ap.add_argument("--max-prompt-length", type=int, default=None,
                    help="prompts keep their last N tokens (default: as the policy's run did)")
    ap.add_argument("--oracle", default="synthetic", help="synthetic[:alpha=..,beta=..] | format[:...] | reward:PATH | pairwise:PATH | judge:PATH")
    ap.add_argument("--n", type=int, default=200, help="at most this many prompts (seeded subset; default 200)")
    ap.add_argument("--k", type=int, default=None,
                    help="sampled pairs per prompt (default 1; 8 with --exploitability)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--hard", action="store_true", help="score oracle decisions (ties ½) instead of probabilities")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: the policy's, else the default tokenizer)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sampler", choices=BACKENDS, default=None,
                    help="sampling backend (default: the policy's run's `sampler` setting, else auto: "
                         "inpo.generation.auto_backend, the faster one as measured)")
    ap.add_argument("--exploitability", action="store_true",
                    help="also estimate the policy's exploitability (pool of both models' samples; synthetic "
                         "oracle: whole feature space and style-only part) with a bootstrap CI")
    ap.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    return ap


ORIGIN_FILE = "inpo_origin.json"


def origin_record(cfg) -> dict:
    """What ``inpo eval`` needs to compare a trained policy with where it started: the starting model (π_ref;
    None = the embedded default), its tokenizer, the encoding, and the prompts it trained on / held out."""
    def where(path):
        return None if path in (None, "default") else str(Path(path).resolve())

    return {"base_model": where(cfg.model), "tokenizer": where(cfg.tokenizer), "chat_template": cfg.chat_template,
            "prompts": where(cfg.prompts) or "default", "eval_prompts": where(cfg.eval_prompts) or "default",
            "data": where(cfg.data), "max_prompt_length": cfg.max_prompt_length, "max_new_tokens": cfg.max_new_tokens,
            "objective": cfg.objective, "seed": cfg.seed, "sft_seed": getattr(cfg, "sft_seed", 0)}


def find_origin(policy: str | os.PathLike) -> dict | None:
    """The run record of a trained policy directory: its ``inpo_origin.json``, else the ``config.yaml`` of the run
    directory one to three levels up (``final/``, ``iter_k/policy``, ``checkpoints/step_k``). None if neither."""
    path = Path(policy).resolve()
    if (path / ORIGIN_FILE).is_file():
        return json.loads((path / ORIGIN_FILE).read_text())
    saved = run_config(path)
    if saved is None:
        return None

    known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    return origin_record(TrainConfig(**known))


def run_config(policy: str | os.PathLike) -> dict | None:
    """The ``config.yaml`` of the run that wrote the policy directory ``policy`` (one to three levels up:
    ``final/``, ``iter_k/policy``, ``checkpoints/step_k``), or None."""
    for parent in list(Path(policy).resolve().parents)[:3]:
        cfg_path = parent / "config.yaml"
        if cfg_path.is_file():
            try:
                saved = yaml.safe_load(cfg_path.read_text()) or {}
            except yaml.YAMLError:
                continue
            if isinstance(saved, dict) and {"objective", "model", "prompts"} <= set(saved):
                return saved
    return None


def _resolve_prompts(spec: str, n: int, seed: int, origin: dict | None = None) -> list:
    if spec == "auto":
        if origin and origin.get("eval_prompts") not in (None, "default"):
            pool = load_prompts(origin["eval_prompts"])
        elif origin and origin.get("prompts") not in (None, "default"):
            pool = split_prompts(load_prompts(origin["prompts"]), "eval")
        else:
            pool = default_prompts("eval")
    elif spec in ("default-eval", "default-train"):
        pool = default_prompts(spec.split("-", 1)[1])
    else:
        pool = load_prompts(spec)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if n < len(pool):
        keep = sorted(np.random.default_rng(seed).choice(len(pool), size=n, replace=False).tolist())
        pool = [pool[i] for i in keep]
    return pool


def _check_resources(args) -> None:
    """What the evaluation will use, before anything loads: the device, the model folders, the bootstrap's memory."""
    args.device = str(resolve_device(args.device, "--device"))
    _check_model_dir(None if args.policy == "default" else args.policy, "--policy")
    _check_model_dir(args.baseline, "--baseline")
    check_fits(bootstrap_bytes(args.n_bootstrap, args.n, args.k), f"--n-bootstrap {args.n_bootstrap} (x --n "
               f"{args.n} prompts, --k {args.k})", "lower --n-bootstrap (the default is 1000)")


def _check_model_dir(path, what: str) -> None:
    if path is None:
        return
    if Path(path).is_file():
        raise ValueError(f"{what} {path!r} is a file; expected a model directory (save_pretrained: config.json and "
                         f"weights)")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{what}: model directory {path!r} does not exist")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.k is None:
        args.k = 8 if args.exploitability else 1
    try:
        _check_args(args)
        setup = _setup(args)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        print(f"inpo eval: error: {exc}", file=sys.stderr)
        return 2
    policy_path = setup["policy_path"]
    sampler = args.sampler or (run_config(policy_path) or {} if policy_path else {}).get("sampler", "auto")
    result, ours, theirs = evaluate(setup["policy"], setup["baseline"], setup["tokenizer"], setup["prompts"],
                                    setup["oracle"], max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, seed=args.seed, n_bootstrap=args.n_bootstrap,
                                    k=args.k, hard=args.hard, return_responses=True,
                                    max_prompt_length=setup["max_prompt_length"], sampler=sampler)
    exploit = _exploitability_rows(setup["oracle"], setup["prompts"], ours, theirs, args) if args.exploitability else []
    _print_tables(args, setup["baseline_name"], result, exploit)
    if not args.json_out:
        return 0
    record = {**asdict(result), "policy": args.policy, "baseline": setup["baseline_name"], "oracle": args.oracle,
              "prompts": args.prompts, "prompts_n": len(setup["prompts"]), "k": args.k, "seed": args.seed,
              "hard": args.hard, "sampler": sampler, "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens, "exploitability": {e.kind: asdict(e) for e in exploit},
              "environment": environment_info()}
    try:
        atomic_write_json(args.json_out, record, indent=2, default=str)
    except OSError as exc:  # the result is computed: never lose it to an unwritable path
        print(json.dumps(record, indent=2, default=str))
        print(f"inpo eval: error: could not write --json {args.json_out!r} ({exc.strerror or exc}); the result "
              f"is printed above", file=sys.stderr)
        return 1
    return 0


def _check_args(args) -> None:
    """Every argument checked before a model loads (ValueError naming it)."""
    for name in ("policy", "baseline", "tokenizer"):  # a real-model name (smollm2) → its converted folder
        setattr(args, name, resolve_model(getattr(args, name)))
    for name in ("k", "max_new_tokens", "n_bootstrap") + (("max_prompt_length",) if args.max_prompt_length
                                                          is not None else ()):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.json_out:
        check_writable_path(args.json_out, "--json", folder=False)
    _check_resources(args)


def _baseline_path(args, policy_path, origin) -> str | None:
    """The baseline folder: --baseline, else the policy's recorded starting model (None: the embedded default)."""
    if args.baseline:
        return args.baseline
    if args.baseline_default or policy_path is None:
        return None
    if origin is not None:
        return origin.get("base_model")  # None: the run trained the embedded default π_ref
    raise ValueError(f"--policy {policy_path!r} has no recorded starting model (no inpo_origin.json beside "
                     f"it, no run config.yaml above it): pass --baseline DIR (e.g. the model you trained "
                     f"from) or --baseline-default (the embedded default π_ref)")


def _setup(args) -> dict:
    """Oracle, prompts, tokenizer, policy and baseline (both checked finite and on one vocabulary)."""
    policy_path = None if args.policy == "default" else args.policy
    origin = find_origin(policy_path) if policy_path else None
    baseline_path = _baseline_path(args, policy_path, origin)
    oracle = make_oracle(args.oracle, device=args.device, seed=args.seed)
    prompts = _resolve_prompts(args.prompts, args.n, args.seed, origin)
    # a tokenizer without a template (and no --no-chat-template) fails here
    tokenizer = resolve_tokenizer(args.tokenizer or None, policy_path, model_arg="--policy",
                                  tokenizer_arg="--tokenizer DIR", plain_text=args.no_chat_template
                                  or (origin or {}).get("chat_template") == "none")
    max_prompt_length = args.max_prompt_length if args.max_prompt_length is not None else \
        (origin or {}).get("max_prompt_length")
    baseline_name = baseline_path or "default"
    policy, baseline = _load_models(args, policy_path, baseline_path, origin, tokenizer)
    return dict(policy_path=policy_path, oracle=oracle, prompts=prompts, tokenizer=tokenizer, policy=policy,
                baseline=baseline, baseline_name=baseline_name, max_prompt_length=max_prompt_length)


def _load_models(args, policy_path, baseline_path, origin, tokenizer) -> tuple:
    """Policy and baseline, both finite and on one vocabulary (ValueError naming the model otherwise)."""
    policy = load_policy(policy_path, tokenizer=tokenizer, device=args.device)
    if baseline_path is None and policy_path is not None:
        print("[inpo eval] baseline: the embedded default π_ref (built once and cached if missing)", flush=True)
    # an embedded run's π_ref is the default built from that run's sft_seed
    baseline = load_policy(baseline_path, tokenizer=tokenizer, device=args.device,
                           default_seed=int((origin or {}).get("sft_seed") or 0))
    for role, model, where in (("policy", policy, args.policy), ("baseline", baseline, baseline_path or "default")):
        bad = first_non_finite(model.state_dict())
        if bad is not None:
            raise ValueError(f"--{role} {where!r}: weight {bad!r} holds NaN/inf values; it cannot be sampled "
                             f"(a diverged training run?)")
    vp, vb = policy.config.vocab_size, baseline.config.vocab_size
    if vp != vb:
        raise ValueError(f"policy and baseline vocabularies differ ({vp} vs {vb}); they must share a tokenizer")
    return policy, baseline


def _print_tables(args, baseline_name: str, result, exploit: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="win-rate of the policy against the baseline (95 % bootstrap CI over prompts)")
    for col in ("policy", "baseline", "oracle", "prompts", "win-rate", "95% CI", "queries"):
        table.add_column(col, justify="right" if col in ("prompts", "win-rate", "queries") else "left")
    table.add_row(args.policy, baseline_name, args.oracle, f"{result.n}×{args.k}", f"{result.win_rate:.3f}",
                  f"[{result.ci_low:.3f}, {result.ci_high:.3f}]", str(result.queries))
    Console().print(table)
    if not exploit:
        return
    table = Table(title=f"exploitability of the policy ({args.k} samples per prompt; 0 = Nash; cross-fit with its "
                        f"95 % bootstrap CI over prompts, plug-in = upper bracket)")
    for col in ("best response over", "cross-fit", "95% CI", "plug-in", "pooled", "queries"):
        table.add_column(col, justify="left" if col == "best response over" else "right")
    names = {"pool": "pool (both models' samples)", "feature": "whole feature space", "style": "style only"}
    for e in exploit:
        table.add_row(names[e.kind], f"{e.value:.3f}", f"[{e.ci_low:.3f}, {e.ci_high:.3f}]", f"{e.plugin:.3f}",
                      "–" if e.pooled is None else f"{e.pooled:.3f}", str(e.queries))
    Console().print(table)


def _exploitability_rows(oracle, prompts, ours, theirs, args) -> list:
    kw = dict(n_bootstrap=args.n_bootstrap, seed=args.seed)
    pools = [list(a) + list(b) for a, b in zip(ours, theirs)]
    rows = [exploitability(oracle, prompts, ours, kind="pool", pools=pools, **kw)]
    if hasattr(oracle, "feature_matrix"):
        rows += [exploitability(oracle, prompts, ours, kind=kind, **kw) for kind in ("feature", "style")]
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
