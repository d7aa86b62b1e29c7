"""The online iteration, end to end (shared/ARCHITECTURE.md's data flow), and offline training on JSONL pairs.

For t = 0..T−1:  sample K responses per prompt from π_t → rank them with the oracle and pick a pair per
prompt (ties dropped; SPPO: per-response win-rate targets instead) → precompute π_ref and π_t log-probs
with the fused head under no_grad (cached to disk) → train E epochs with the objective → π_{t+1}
(checkpoint) → win-rate of π_{t+1} against π_ref on held-out prompts → next t.

Which log-probs each objective gets (ALGORITHMS.md):  INPO: ref = π_ref, anchor = π_t (π_0 = π_ref);
IPO: ref = π_ref (online IPO = INPO with τ/η = 1); DPO: ref = π_t (iterative DPO); SPPO: anchor = π_t and
targets P̂(y ≻ π_t); ONPO: two regressions per iteration -- π'_{t+1} against anchor π'_t, then π_{t+1}
against anchor π'_{t+1}, both on the pairs sampled from π_t (π'_0 = π_ref).

Everything an iteration produces is written atomically under ``<out>/iter_<t>/`` before it is used, so a
crash loses nothing already written and ``--resume`` reuses it.

Under ``torchrun`` (FSDP2, world size W > 1) the policy is sharded for training, and every rank keeps a plain
(unsharded) twin that receives π_t's full weights before generation and evaluation. The iteration's prompts are
split into W contiguous blocks; rank r samples its block with seed ``base + 1_000_003·r`` and ranks/selects its
own pairs (oracle seed offset the same way), then ``all_gather_object`` gives every rank the full data in
prompt order. The samples therefore differ from a single-process run (other RNG streams, smaller generation
batches), but a run is deterministic for a given seed and W. Log-probs are computed by every rank on all
sequences with plain models (π_ref, the twin), training uses the shared FSDP2
:func:`~inpo.train.loop.train_phase`, evaluation runs on rank 0 and its result is broadcast; only rank 0
writes files. ONPO's auxiliary chain π' is a second FSDP2-sharded model, trained and checkpointed beside the policy.

Resume (``--resume``) works the same in one process and under torchrun, with two conditions under torchrun: the
same number of processes as the run that wrote the checkpoint (it decides every rank's share of the prompts and of
each step; a different one is refused with a clear error), and an output directory every rank can read (one
node, or a shared filesystem): every rank reads the checkpoint and the iteration's files. Whether an iteration's
files already exist is decided by rank 0 and broadcast, so all ranks take the same path through the collectives.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from inpo.data.chat import encode_prompt, prompt_text
from inpo.data.tokenizer import resolve_tokenizer
from inpo.generation import SamplingPlan
from inpo.generation.limits import check_prompt_lengths, context_length
from inpo.train.checkpoint import atomic_write_text, load_latest_good_checkpoint, save_checkpoint
from inpo.train.config import TrainConfig, config_to_yaml
from inpo.train.loop import (LOCK_NAME, RUN_MARKER, RunContext, RunDirError, StopRun, agreed_stop_signal,
                             check_output_dir, claim_run_dir, export_final, graceful_stop, interrupted,
                             precompute_logps, probe_run_lock, release_run_locks, resolve_device, train_phase)
from inpo.utils.dist import get_rank, get_world_size, is_distributed, rank_world

__all__ = ["run_online", "run_offline", "run_training", "run_tokenizer", "training_sequences"]


# -- small file helpers ----------------------------------------------------------------------------------------

def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save

    from inpo.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}))


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# -- setup -------------------------------------------------------------------------------------------------------

def run_tokenizer(cfg: TrainConfig):
    """The run's tokenizer (:func:`inpo.data.tokenizer.resolve_tokenizer` from ``tokenizer`` / ``model`` /
    ``chat_template``), refused here, before anything is written, when it cannot encode the run's data."""
    return resolve_tokenizer(cfg.tokenizer, cfg.model, plain_text=cfg.chat_template == "none")


def _attn_impl(cfg: TrainConfig, device: torch.device) -> str:
    from inpo.ops.attention import default_implementation

    return cfg.attn_implementation or default_implementation(device)


def _prepare_policy(cfg: TrainConfig, model, device):
    """Training-time transforms of the policy: Liger kernels, activation checkpointing, compiled body."""
    if cfg.liger:
        from inpo._optional import require

        liger = require("liger_kernel").transformers
        liger.apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                          fused_linear_cross_entropy=False, model=model)
    if cfg.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.compile:
        model.base_model.compile(dynamic=True)
    return model


def _setup(cfg: TrainConfig):
    """Device, tokenizer, π_ref (frozen) and the policy (a copy of π_ref, or the checkpointed iterate)."""
    from inpo.train.model import load_policy

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars would drown our own
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and cfg.model is None:
        # The default model's matrices are ~128 wide: a second thread's sync costs more than it saves, and on a
        # busy 2-core box two spinning threads were 2-10x slower than one (measured while writing this).
        torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    tokenizer = run_tokenizer(cfg)
    ref = load_policy(cfg.model, tokenizer=tokenizer, device=device, attn_implementation=_attn_impl(cfg, device),
                      default_seed=cfg.sft_seed)
    ref.eval().requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True)
    return device, tokenizer, ref, _prepare_policy(cfg, policy, device)


def _begin_run(cfg: TrainConfig, device) -> tuple[RunContext, dict | None]:
    """Claim the output directory (rank 0: lock, clear a previous run on a fresh start, marker) and, with
    --resume, load the newest checkpoint that verifies and check that it belongs to this config and data.
    Called after every input has been validated (model, tokenizer, data, prompts, oracle): nothing is deleted
    before the run is known to be able to start."""
    if not cfg.output:
        raise ValueError("output is required: pass --output DIR (where metrics, checkpoints and the final model go)")
    out = Path(cfg.output)
    run = RunContext(cfg=cfg, out=out, device=device)
    run.fingerprint = run_fingerprint(cfg)

    def claim():
        previous = out.is_dir() and any(p.name not in (RUN_MARKER, LOCK_NAME) for p in out.iterdir())
        claim_run_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
        if previous and not cfg.resume:
            run.print(f"[inpo] starting fresh in {out} (the previous run's files were replaced)")

    _on_main(claim)
    ckpt = None
    if cfg.resume:
        ckpt = load_latest_good_checkpoint(out, warn=run.print)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'} (nothing to resume; "
                                    f"run without --resume to start fresh)")
        path = ckpt["path"]
        if "fingerprint" in ckpt["state"]:
            _check_resume_fingerprint(ckpt["state"]["fingerprint"], run.fingerprint, path)
        else:  # a checkpoint from before fingerprints: the saved config.yaml is all there is to compare
            _check_resume_config(cfg, out)
        run.global_step = int(ckpt["state"]["global_step"])
        st = ckpt["state"]
        keep_iters = st["iteration"] + (1 if st["phase"] == "done" else 0)
        run.truncate_metrics(run.global_step, keep_iters)
        run.print(f"[inpo] resuming from {path.name}: iteration {st['iteration']} phase {st['phase']} "
                  f"step {st.get('iter_step', 0)} (global {run.global_step})")
        if ckpt["world_size"] != get_world_size():
            raise ValueError(f"--resume: {path.name} was written by a run of {ckpt['world_size']} process(es), this run "
                             f"has {get_world_size()}; resume with the same number of processes (it decides each "
                             f"rank's share of the prompts and of every step)")
    if run.is_main:
        atomic_write_text(out / "config.yaml", config_to_yaml(cfg))
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()  # rank 0 has cleared / created the output directory before anyone reads or writes it
    return run, ckpt


def _on_main(fn) -> None:
    """Run ``fn`` on rank 0 only; its ValueError is raised on every rank (under torchrun nobody is left waiting
    in a collective for a rank that failed)."""
    error: list = [None]
    if get_rank() == 0:
        try:
            fn()
        except ValueError as exc:
            error[0] = str(exc)
    if is_distributed():
        import torch.distributed as dist

        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise RunDirError(error[0])


def _main_sees(path: Path) -> bool:
    """Whether ``path`` is a file, as rank 0 sees it (broadcast under torchrun): the ranks must agree on which
    phases to skip, since some of them (precomputing with a sharded model) are collective."""
    seen = [path.is_file()]
    if is_distributed():
        import torch.distributed as dist

        dist.broadcast_object_list(seen, src=0)
    return bool(seen[0])


# Keys a resumed run may change: where/how it runs and how far it goes, not what it computes.
_RESUME_FREE = {"resume", "max_steps", "iterations", "progress", "threads", "output", "device", "checkpoint_every",
                "keep_checkpoints", "evaluate", "n_bootstrap", "gen_batch_size", "overwrite",
                "keep_iterates", "report_to", "logging_steps"}
# File-valued keys whose content (not only their path) a resumed run must share.
_FINGERPRINT_FILES = ("data", "prompts", "eval_prompts")


def run_fingerprint(cfg: TrainConfig) -> dict:
    """What a checkpoint must share with the run that resumes it: every config key that decides what is computed
    and the sha256 of the data / prompt files (stored in every checkpoint's state)."""
    import hashlib

    config = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    files = {}
    for key in _FINGERPRINT_FILES:
        value = getattr(cfg, key)
        if value and value != "default" and Path(value).is_file():
            files[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return {"config": config, "files": files}


def _check_resume_fingerprint(saved: dict, now: dict, path: Path) -> None:
    changed = [f"{k}: {saved['config'][k]!r} -> {v!r}" for k, v in sorted(now["config"].items())
               if k in saved.get("config", {}) and saved["config"][k] != v]
    for key in sorted(set(saved.get("files", {})) | set(now["files"])):
        a, b = saved.get("files", {}).get(key), now["files"].get(key)
        if a != b:
            changed.append(f"the content of {key} file {now['config'].get(key)!r} "
                           f"(sha256 {str(a)[:12]} -> {str(b)[:12]})")
    if changed:
        raise ValueError(f"--resume: {path.name} was written with other settings or data ({'; '.join(changed)}); "
                         f"resume with the same settings and files, or start a new run in another --output")


def _check_resume_config(cfg: TrainConfig, out: Path) -> None:
    import yaml

    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.to_dict()
    diff = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(now) if k in saved and k not in _RESUME_FREE
            and saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume with a config that differs from the run in {out} ({'; '.join(diff)}); "
                         f"resume with the same settings, or start a new run in another --output")


def _progress(cfg: TrainConfig):
    if not cfg.progress or not sys.stdout.isatty():  # a log file gets plain progress lines instead of bars
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _encode_checked(tokenizer, prompts: list, cfg: TrainConfig) -> dict[str, list[int]]:
    """Prompt ids (cut to max_prompt_length) by :func:`~inpo.data.chat.prompt_key`, with a clear error when a
    prompt plus its longest response cannot fit the token budget."""
    from inpo.data.chat import encode_prompt, prompt_key, prompt_text

    trunc = cfg.truncation()
    out = {}
    for p in prompts:
        key = prompt_key(p)
        if key in out:
            continue
        ids = trunc.prompt(encode_prompt(tokenizer, p))
        # +2: the template's end of turn (and ChatML's newline after it) follow the sampled tokens
        seq = len(ids) + cfg.max_new_tokens + 2
        need = 2 * (seq if cfg.max_length is None else min(seq, cfg.max_length))
        if need > cfg.max_tokens:
            raise ValueError(f"prompt {prompt_text(p)[:60]!r} has {len(ids)} tokens: a pair of it with two "
                             f"{cfg.max_new_tokens}-token responses needs {need} > max_tokens={cfg.max_tokens}; raise "
                             f"max_tokens, or shorten the prompt (max_prompt_length)")
        out[key] = ids
    return out


def prompt_pools(cfg: TrainConfig, tokenizer=None) -> tuple[list, list]:
    """(train, eval) prompt pools. ``prompts: default`` → the embedded task's fixed splits; a user's prompts
    file → its own fixed held-out split (:func:`~inpo.data.prompts.split_prompts`), disjoint from training,
    unless ``eval_prompts`` names a file (then all of ``prompts`` trains). With ``tokenizer``, every prompt of a
    file is encoded once: a template or format error names file:line."""
    from inpo.data.prompts import default_prompts, load_prompts, split_prompts

    if cfg.prompts == "default":
        train = default_prompts("train")
        held_out = default_prompts("eval")
    else:
        pool = load_prompts(cfg.prompts, tokenizer=tokenizer)
        if cfg.eval_prompts == "default":  # whether or not this run evaluates: the same training prompts
            train, held_out = split_prompts(pool, "train"), split_prompts(pool, "eval")
        else:
            train, held_out = pool, []
    if cfg.eval_prompts != "default":
        held_out = load_prompts(cfg.eval_prompts, tokenizer=tokenizer)
    return train, held_out


def _prompt_sets(cfg: TrainConfig, iteration: int) -> list:
    pool = prompt_pools(cfg)[0]
    if cfg.n_prompts is None or cfg.n_prompts >= len(pool):
        return pool
    # A fresh subset every iteration (the paper uses disjoint prompt splits per iteration).
    keep = sorted(random.Random(cfg.seed * 1009 + iteration).sample(range(len(pool)), cfg.n_prompts))
    return [pool[i] for i in keep]


def _eval_prompts(cfg: TrainConfig) -> list:
    pool = prompt_pools(cfg)[1]
    return pool if cfg.n_eval is None else pool[: cfg.n_eval]


# -- one iteration's phases ----------------------------------------------------------------------------------

def sampling_plan(cfg: TrainConfig, tokenizer, model):
    """What the run samples (:class:`~inpo.generation.SamplingPlan`: ``sampler: auto`` weighs it, the vLLM engine is
    sized by it), after checking -- before any engine starts -- that every training and held-out prompt, cut to
    max_prompt_length, plus max_new_tokens fits the model's context (one rule for both samplers)."""
    train, held_out = prompt_pools(cfg, tokenizer)
    held_out = held_out[:cfg.n_eval] if cfg.evaluate else []  # the ones evaluated (_eval_prompts)
    trunc, context = cfg.truncation(), context_length(model.config)
    lengths = {}
    for what, pool in (("training prompt", train), ("held-out prompt", held_out)):
        lengths[what] = [len(trunc.prompt(encode_prompt(tokenizer, p))) for p in pool]
        check_prompt_lengths(lengths[what], cfg.max_new_tokens, context, max_prompt_length=cfg.max_prompt_length,
                             name=lambda i, what=what, pool=pool: f"{what} {i} ({prompt_text(pool[i])[:40]!r})")
    n = min(cfg.n_prompts or len(train), len(train))
    mean = sum(lengths["training prompt"]) / max(len(train), 1)
    calls = [(n * cfg.k, round(mean * n * cfg.k))] * cfg.iterations  # each iteration's generation
    if held_out:  # π_ref once, then each π_{t+1}
        calls += [(len(held_out) * cfg.eval_k, sum(lengths["held-out prompt"]) * cfg.eval_k)] * (cfg.iterations + 1)
    longest = max(lengths["training prompt"] + lengths["held-out prompt"], default=0)
    return SamplingPlan(tuple(calls), cfg.max_new_tokens, longest, weight_updates=len(calls) - 1)


class _RunSampler:
    """The run's one sampler, built on first use; ``sampler(model)`` points it at ``model``'s current weights
    (π_t, π_{t+1}, π_ref) and returns it. With vLLM that is one engine for the whole run whose weights are reloaded
    in place; ``close()`` (the ``with`` block's end) shuts it down."""

    def __init__(self, cfg: TrainConfig, tokenizer, plan=None, say=print):
        self.cfg, self.tokenizer, self.sampler, self.plan, self.say = cfg, tokenizer, None, plan, say

    def __call__(self, model):
        from inpo.generation import make_sampler

        cfg = self.cfg
        if self.sampler is None:
            self.sampler = make_sampler(cfg.sampler, model, self.tokenizer, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                                        dtype=cfg.sampler_dtype, max_prompt_length=cfg.max_prompt_length,
                                        plan=self.plan, vllm_options=cfg.vllm_options(), say=self.say)
        else:
            self.sampler.set_policy(model)
        return self.sampler

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def _generate_and_rank(cfg, run, t, policy, tokenizer, oracle, times: dict, sampler) -> tuple[list[dict], dict]:
    """iter_t/samples.jsonl (K responses per prompt) and iter_t/data.jsonl (pairs, or SPPO's scored samples)."""
    d = run.out / f"iter_{t:03d}"
    samples_path, data_path = d / "samples.jsonl", d / "data.jsonl"
    if data_path.is_file():
        meta = json.loads((d / "rank_stats.json").read_text())
        return _read_jsonl(data_path), meta
    if samples_path.is_file():
        rows = _read_jsonl(samples_path)
        prompts, responses = [r["prompt"] for r in rows], [r["responses"] for r in rows]
    else:
        prompts = _prompt_sets(cfg, t)
        _encode_checked(tokenizer, prompts, cfg)
        t0 = time.perf_counter()
        responses = sampler(policy).sample(prompts, cfg.k, seed=cfg.seed * 7919 + t)
        times["generate_s"] = time.perf_counter() - t0
        _write_jsonl(samples_path, [{"prompt": p, "responses": r} for p, r in zip(prompts, responses)])
    t0 = time.perf_counter()
    data, stats = _rank_responses(cfg, prompts, responses, oracle, seed=cfg.seed * 31 + t)
    times["rank_s"] = time.perf_counter() - t0
    atomic_write_text(d / "rank_stats.json", json.dumps(stats))
    _write_jsonl(data_path, data)
    return data, stats


def _rank_responses(cfg, prompts, responses, oracle, *, seed: int) -> tuple[list[dict], dict]:
    """Pairs (or SPPO's scored samples) for ``prompts`` from the oracle, in prompt order, and their stats."""
    from inpo.oracles import estimate_win_rates, select_pairs

    if cfg.make_objective().samples == "scored":  # K scored responses per prompt (SPPO) instead of pairs
        q0 = oracle.queries
        rates = estimate_win_rates(prompts, responses, oracle)
        data = [{"prompt": p, "response": y, "target": float(w)}
                for p, ys, ws in zip(prompts, responses, rates) for y, w in zip(ys, ws)]
        stats = {"queries": oracle.queries - q0, "pairs": 0, "sequences": len(data), "ties_dropped": 0}
    else:
        pairs, stats = select_pairs(prompts, responses, oracle, strategy=cfg.pair_strategy, seed=seed)
        data = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    return data, stats


# -- under torchrun: per-rank generation and ranking, gathered in prompt order ----------------------------------

_RANK_SEED_STRIDE = 1_000_003  # rank r's sampling / selection seed = the single-process seed + r * stride


def _block(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``n`` items (the first ``n % world`` ranks take one more)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _load_full_weights(model, plain) -> None:
    """Copy the (FSDP2-sharded) ``model``'s full weights into the plain twin ``plain``. Collective: every rank
    calls it and every rank gets the full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # cpu_offload=True would hand the full tensors to rank 0 only: every rank generates, so keep them everywhere.
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    full = {k.removeprefix("model."): v for k, v in full.items()}  # FusedHeadPolicy's prefix
    missing, unexpected = plain.load_state_dict(full, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(plain.config, "tie_word_embeddings",
                                                                          False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"sampler twin does not match the policy: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")


def _generate_and_rank_distributed(cfg, run, t, plain, tokenizer, oracle, times: dict,
                                   sampler) -> tuple[list[dict], dict]:
    """Rank r samples and ranks its block of the prompts with ``plain`` (π_t's full weights); the blocks are
    gathered in rank (= prompt) order so every rank holds the same data. Rank 0 writes the iteration's files."""
    import torch.distributed as dist

    d = run.out / f"iter_{t:03d}"
    if _main_sees(d / "data.jsonl"):  # a resumed iteration: its pairs were gathered and written before the crash
        return _read_jsonl(d / "data.jsonl"), json.loads((d / "rank_stats.json").read_text())
    rank, world = rank_world()
    prompts = _prompt_sets(cfg, t)
    _encode_checked(tokenizer, prompts, cfg)
    lo, hi = _block(len(prompts), rank, world)
    mine = prompts[lo:hi]
    t0 = time.perf_counter()
    seed = cfg.seed * 7919 + t + _RANK_SEED_STRIDE * rank
    responses = sampler(plain).sample(mine, cfg.k, seed=seed) if mine else []
    times["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mine:
        seed = cfg.seed * 31 + t + _RANK_SEED_STRIDE * rank
        data, stats = _rank_responses(cfg, mine, responses, oracle, seed=seed)
    else:
        data, stats = [], {"queries": 0, "pairs": 0, "ties_dropped": 0}
    times["rank_s"] = time.perf_counter() - t0
    parts: list = [None] * world
    dist.all_gather_object(parts, {"prompts": mine, "responses": responses, "data": data, "stats": stats})
    data = [r for part in parts for r in part["data"]]
    stats = dict(parts[0]["stats"])
    for part in parts[1:]:
        for k, v in part["stats"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in stats:
                stats[k] += v
            else:
                stats.setdefault(k, v)
    stats["world_size"] = world
    stats["rank_units"] = [len(part["data"]) for part in parts]  # pairs (SPPO: sequences) each rank selected
    if run.is_main:
        _write_jsonl(d / "samples.jsonl", [{"prompt": p, "responses": r} for part in parts
                                           for p, r in zip(part["prompts"], part["responses"])])
        atomic_write_text(d / "rank_stats.json", json.dumps(stats))
        _write_jsonl(d / "data.jsonl", data)
    return data, stats


def training_sequences(tokenizer, data: list[dict], pairwise: bool, cfg: TrainConfig, run=None):
    """``(seqs, kept)``: (prompt_ids, response_ids) per sequence through the chat template on the whole
    conversation (:func:`inpo.data.chat.encode_completion`), truncated with TRL's semantics; ``kept`` are the
    records left (a pair, or SPPO's sample, is dropped as a whole when truncation leaves nothing to score).
    A pair that still exceeds the packing budget is a ValueError naming it, before any work is done."""
    from inpo.data.chat import encode_prompt, encode_responses, prompt_key, prompt_text, record_origin

    trunc = cfg.truncation()
    prompt_ids: dict = {}
    seqs, kept = [], []
    fields = ("chosen", "rejected") if pairwise else ("response",)
    for r in data:
        key, where = prompt_key(r["prompt"]), record_origin(r)  # where: file:line of an offline pair
        if key not in prompt_ids:  # the whole conversation is rendered, then cut: ids before truncation
            prompt_ids[key] = encode_prompt(tokenizer, r["prompt"], where=where)
        p, ys = encode_responses(tokenizer, r["prompt"], [r[f] for f in fields], prompt_ids=prompt_ids[key],
                                 where=where)  # a pair shares TRL's prompt/response split
        parts = [trunc.apply(p, y) if trunc.active else (p, y) for y in ys]
        if any(part is None for part in parts):
            continue
        size = sum(len(p) + len(y) for p, y in parts)
        if size > cfg.max_tokens:
            raise ValueError(f"{'the pair' if pairwise else 'the sequence'} for prompt {prompt_text(r['prompt'])[:60]!r} "
                             f"has {size} tokens, more than max_tokens={cfg.max_tokens} (the packed micro-batch "
                             f"budget); raise max_tokens or set max_length (TRL's truncation; now {cfg.max_length})")
        seqs += parts
        kept.append(r)
    if len(kept) < len(data) and run is not None:
        run.print(f"[inpo] dropped {len(data) - len(kept)} of {len(data)} {'pairs' if pairwise else 'sequences'} "
                  f"whose prompt alone fills max_length={cfg.max_length} (truncation_mode=keep_start, as TRL)")
    return seqs, kept


def _evaluate(cfg, run, t, policy, ref, tokenizer, oracle, sampler) -> dict:
    from inpo.eval import win_rate

    prompts = _eval_prompts(cfg)
    base_path = run.out / "eval_ref_responses.jsonl"
    if base_path.is_file():
        base = [r["responses"] for r in _read_jsonl(base_path)]
    else:  # π_ref never changes: its responses are sampled once per run, with the same seed as the policy's
        base = sampler(ref).sample(prompts, cfg.eval_k, seed=cfg.eval_seed)
        if run.is_main:
            _write_jsonl(base_path, [{"prompt": p, "responses": y} for p, y in zip(prompts, base)])
    pol = sampler(policy).sample(prompts, cfg.eval_k, seed=cfg.eval_seed)
    if run.is_main:
        _write_jsonl(run.out / f"iter_{t:03d}" / "eval_responses.jsonl",
                     [{"prompt": p, "responses": y} for p, y in zip(prompts, pol)])
    wr = win_rate(prompts, pol, base, oracle, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    return {"win_rate": wr.win_rate, "win_rate_ci_low": wr.ci_low, "win_rate_ci_high": wr.ci_high,
            "eval_n": wr.n, "eval_queries": wr.queries, **_exploitability_record(cfg, oracle, prompts, pol)}


def _exploitability_record(cfg, oracle, prompts, responses) -> dict:
    """Exploitability of π_{t+1} from its eval samples, where the oracle's best response is computable from
    features (the synthetic oracle; no oracle queries). Other oracles: ``inpo eval --exploitability`` (pool)."""
    from inpo.exploitability import exploitability

    if not hasattr(oracle, "feature_matrix"):
        return {}
    out = {}
    for kind, key in (("feature", "exploitability"), ("style", "style_exploitability")):
        e = exploitability(oracle, prompts, responses, kind=kind, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        out.update({key: e.value, f"{key}_ci_low": e.ci_low, f"{key}_ci_high": e.ci_high})
    return out


def _evaluate_on_main(cfg, run, t, policy, plain, ref, tokenizer, oracle, sampler) -> dict:
    """Under torchrun: rank 0 evaluates the twin (π_{t+1}'s full weights) and broadcasts the result; the other
    ranks wait in the broadcast. An error on rank 0 is re-raised on every rank (nobody hangs)."""
    import torch.distributed as dist

    _load_full_weights(policy, plain)
    box: list = [None]
    if run.is_main:
        try:
            box[0] = _evaluate(cfg, run, t, plain, ref, tokenizer, oracle, sampler)
        except Exception as exc:  # noqa: BLE001 - forwarded to every rank below
            box[0] = {"__error__": f"{type(exc).__name__}: {exc}"}
    dist.broadcast_object_list(box, src=0)
    if "__error__" in box[0]:
        raise RuntimeError(f"evaluation on rank 0 failed: {box[0]['__error__']}")
    return box[0]


# -- the starting model, recorded beside every export -------------------------------------------------------------

def _export(run, policy, tokenizer, **kw) -> Path:
    """export_final (``kw``: dest, meta) plus the record of the run's starting model that `inpo eval` reads."""
    from inpo.eval import ORIGIN_FILE, origin_record

    final = export_final(run, policy, tokenizer, **kw)
    if run.is_main:
        atomic_write_text(final / ORIGIN_FILE, json.dumps(origin_record(run.cfg), indent=2) + "\n")
    return final


# -- the loops --------------------------------------------------------------------------------------------------

def _releasing_run_locks(fn):
    """The output directory's lock is released when ``fn`` returns or raises (callers such as the iteration
    bench call run_online directly, several runs in one process)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_run_locks()

    return wrapper


@_releasing_run_locks
def run_online(config: TrainConfig) -> list[dict]:
    """The T-iteration online loop. Returns the per-iteration records (also in ``<out>/metrics.jsonl``)."""
    from inpo.oracles import make_oracle
    from inpo.train.checkpoint import load_model_weights

    cfg = config
    distributed = is_distributed()
    plain = None  # under torchrun: the unsharded twin of the policy that generates, scores π_t and is evaluated
    device, tokenizer, ref, policy = _setup(cfg)
    if distributed:
        from inpo.train.distributed import shard_policy

        plain = copy.deepcopy(ref)
        policy = shard_policy(policy)
    train_pool, held_out = prompt_pools(cfg)  # a bad prompts file fails before the run dir is touched
    if not train_pool or (cfg.evaluate and not held_out):
        raise ValueError(f"prompts {cfg.prompts!r}: no {'training' if not train_pool else 'held-out'} prompts left")
    # Every input is checked before _begin_run touches the output directory: the prompt files (above), the oracle,
    # that iteration 0's prompts fit the token budget, the sampler backend.
    oracle = make_oracle(cfg.oracle, device=str(device), seed=cfg.seed)
    plan = sampling_plan(cfg, tokenizer, ref)  # every prompt fits the model's context with max_new_tokens
    _encode_checked(tokenizer, _prompt_sets(cfg, 0), cfg)
    if cfg.sampler == "vllm":
        from inpo._optional import require

        require("vllm")
    run, ckpt = _begin_run(cfg, device)
    run.print(f"[inpo] {cfg.default_notes()}")
    run.n_params = sum(p.numel() for p in policy.parameters())
    run.tokenizer = tokenizer
    objective = cfg.make_objective()
    aux = None
    if objective.aux_chain:  # ONPO's auxiliary chain π', π'_0 = π_ref; sharded like the policy under torchrun
        aux = copy.deepcopy(ref).requires_grad_(True)
        aux = shard_policy(aux) if distributed else aux
    start_iter, resume_phase, resume_step = 0, None, 0
    if ckpt is not None:
        st = ckpt["state"]
        if st["phase"] == "done":
            load_model_weights(policy, ckpt["model"])
            start_iter = st["iteration"] + 1
        else:
            start_iter, resume_phase, resume_step = st["iteration"], st["phase"], st["iter_step"]
        if aux is not None and "aux" in ckpt["extra_models"]:
            load_model_weights(aux, ckpt["extra_models"]["aux"])
        if "policy" in ckpt["extra_models"]:
            load_model_weights(policy, ckpt["extra_models"]["policy"])
        pending = [r for r in run.records if r.get("kind") == "iteration"]
        if st["phase"] == "done" and len(pending) <= st["iteration"]:
            start_iter = st["iteration"]  # the iteration finished training but its evaluation was lost
            resume_phase = "eval"
    run.print(f"[inpo] {objective!r}, {cfg.iterations} iterations, K={cfg.k}, oracle={cfg.oracle}, device={device}")
    records = [r for r in run.records if r.get("kind") == "iteration"]
    with _RunSampler(cfg, tokenizer, plan, run.print) as sampler, _progress(cfg) as progress:  # one sampler (engine) per run
        run.progress = progress
        for t in range(start_iter, cfg.iterations):
            if t > start_iter and agreed_stop_signal(device) is not None:  # iteration t-1's checkpoint is written
                raise interrupted(f"after iteration {t - 1}")
            if cfg.max_steps is not None and run.global_step >= cfg.max_steps and resume_phase != "eval":
                raise StopRun(f"max_steps={cfg.max_steps} reached after iteration {t - 1}")
            times: dict = {}
            t_iter = time.perf_counter()
            if resume_phase != "eval":
                if distributed:
                    _load_full_weights(policy, plain)
                    data, rank_stats = _generate_and_rank_distributed(cfg, run, t, plain, tokenizer, oracle,
                                                                      times, sampler)
                else:
                    data, rank_stats = _generate_and_rank(cfg, run, t, policy, tokenizer, oracle, times, sampler)
                pairwise = objective.pairwise
                seqs, data = training_sequences(tokenizer, data, pairwise, cfg, run)
                logps_path = run.out / f"iter_{t:03d}" / "logps.safetensors"
                if _main_sees(logps_path):
                    logps = _load_tensors(logps_path)
                else:
                    t0 = time.perf_counter()
                    need, logps = objective.sources, {}  # the log-prob sources the objective reads
                    if "ref" in need or (t == 0 and "iterate" in need):
                        logps["ref"] = precompute_logps(ref, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl,
                                                        pairwise=pairwise)
                    if "iterate" in need:  # π_0 = π_ref: the first iterate's log-probs are the reference's
                        logps["iterate"] = logps["ref"].clone() if t == 0 else precompute_logps(
                            plain if distributed else policy, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl,
                            pairwise=pairwise)
                    if "aux" in need:
                        logps["aux"] = precompute_logps(aux, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
                    times["precompute_s"] = time.perf_counter() - t0
                    if run.is_main:
                        _save_tensors(logps_path, logps)
                if not seqs:
                    raise RuntimeError(f"iteration {t}: the oracle left no pairs (all ties); raise k or temperature")
                t0 = time.perf_counter()
                if objective.aux_chain:
                    _onpo_iteration(cfg, run, t, policy, aux, seqs, logps, objective, ckpt, resume_phase, resume_step)
                else:
                    train_phase(run, policy, seqs, objective.side_inputs(logps, data), objective, iteration=t,
                                start_step=resume_step if resume_phase == "train" else 0,
                                resume_ckpt=ckpt if resume_phase == "train" else None)
                times["train_s"] = time.perf_counter() - t0
                save_checkpoint(run.out, model=policy, state={"iteration": t, "phase": "done",
                                "global_step": run.global_step, "fingerprint": run.fingerprint},
                                extra_models={"aux": aux} if aux is not None else None, keep=cfg.keep_checkpoints,
                                tokenizer=tokenizer)
                _keep_iterate(cfg, run, t, policy, tokenizer)
            else:
                rank_stats = json.loads((run.out / f"iter_{t:03d}" / "rank_stats.json").read_text())
                if not _main_sees(_iterate_dir(run.out, t) / ITERATE_META):  # crashed between checkpoint and export
                    _keep_iterate(cfg, run, t, policy, tokenizer)
            resume_phase, resume_step, ckpt = None, 0, None
            # The ranking's own query count (from its stats file, so a resumed iteration reports it too).
            rec = {"kind": "iteration", "iteration": t, "oracle_queries": rank_stats.get("queries", 0),
                   "pairs": rank_stats.get("pairs", 0), "ties_dropped": rank_stats.get("ties_dropped", 0),
                   "step": run.global_step, **times}
            if cfg.evaluate:
                t0 = time.perf_counter()
                if distributed:
                    rec.update(_evaluate_on_main(cfg, run, t, policy, plain, ref, tokenizer, oracle, sampler))
                else:
                    rec.update(_evaluate(cfg, run, t, policy, ref, tokenizer, oracle, sampler))
                rec["eval_s"] = time.perf_counter() - t0
            rec["wall_s"] = time.perf_counter() - t_iter
            run.log(rec)
            records.append(rec)
            if "win_rate" in rec:
                run.print(f"[inpo] iteration {t}: win-rate vs π_ref {rec['win_rate']:.3f} "
                          f"[{rec['win_rate_ci_low']:.3f}, {rec['win_rate_ci_high']:.3f}]  "
                          f"pairs {rec['pairs']}  oracle queries {rec['oracle_queries']}  {rec['wall_s']:.1f} s")
    run.progress = None
    if agreed_stop_signal(device) is not None:
        raise interrupted("before the final export")
    _export(run, policy, tokenizer)
    run.reporter.close()
    return records


ITERATE_META = "inpo_export.json"  # written by export_final into every iterate folder: marks it as ours


def _iterate_dir(out: Path, t: int) -> Path:
    return out / f"iter_{t:03d}" / "policy"


def _keep_iterate(cfg, run, t, policy, tokenizer) -> Path:
    """π_{t+1} -- the policy iteration t trained, the one its win-rate row measures -- as a transformers model
    folder ``<out>/iter_<t>/policy`` (collective under FSDP). With ``keep_iterates: N`` only the newest N such
    folders are kept; a folder is removed only when its ``inpo_export.json`` says it is an iterate of ours."""
    path = _export(run, policy, tokenizer, dest=_iterate_dir(run.out, t),
                        meta={"kind": "iterate", "iteration": t, "iterate": t + 1, "objective": cfg.objective,
                              "global_step": run.global_step, "start_model": cfg.model or "default"})
    if run.is_main and cfg.keep_iterates is not None:
        prune_iterates(run.out, cfg.keep_iterates)
    return path


def prune_iterates(out: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` iterate folders ``<out>/iter_*/policy`` that are ours (their
    ``inpo_export.json`` says kind "iterate"); anything else is left alone. Returns the removed folders."""
    ours = []
    for d in Path(out).glob("iter_*/policy"):
        try:
            meta = json.loads((d / ITERATE_META).read_text())
        except (OSError, ValueError):
            continue  # not written by us (or not completely): never deleted
        if isinstance(meta, dict) and meta.get("kind") == "iterate" and isinstance(meta.get("iteration"), int):
            ours.append((meta["iteration"], d))
    removed = [d for _, d in sorted(ours)[:-keep]] if keep > 0 else []
    for d in removed:
        shutil.rmtree(d)
    return removed


def _onpo_iteration(cfg, run, t, policy, aux, seqs, logps, objective, ckpt, resume_phase, resume_step):
    """ONPO's two regressions on π_t's pairs: π'_{t+1} against anchor π'_t, then π_{t+1} against π'_{t+1}."""
    d = run.out / f"iter_{t:03d}"
    if resume_phase in (None, "aux"):
        train_phase(run, aux, seqs, {"anchor_logps": logps["aux"]}, objective, iteration=t, phase="aux",
                    start_step=resume_step if resume_phase == "aux" else 0,
                    resume_ckpt=ckpt if resume_phase == "aux" else None, extra_models={"policy": policy})
        resume_phase, resume_step, ckpt = None, 0, None
    next_aux_path = d / "logps_aux_next.safetensors"
    if _main_sees(next_aux_path):
        anchor = _load_tensors(next_aux_path)["aux_next"]
    else:  # under torchrun a collective pass: every rank scores every sequence with the sharded π'_{t+1}
        anchor = precompute_logps(aux, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
        if run.is_main:
            _save_tensors(next_aux_path, {"aux_next": anchor})
    train_phase(run, policy, seqs, {"anchor_logps": anchor}, objective, iteration=t, phase="train",
                start_step=resume_step if resume_phase == "train" else 0,
                resume_ckpt=ckpt if resume_phase == "train" else None, extra_models={"aux": aux})


@_releasing_run_locks
def run_offline(config: TrainConfig) -> list[dict]:
    """Train on a JSONL file of TRL-style ``{"prompt", "chosen", "rejected"}`` records (one pass of
    ``epochs`` epochs). INPO runs with π_t = π_ref; DPO/IPO use π_ref as the reference."""
    from inpo.data.pairs import load_pairs

    cfg = config
    device, tokenizer, ref, policy = _setup(cfg)
    records = load_pairs(cfg.data)
    n_records = len(records)
    seqs, records = training_sequences(tokenizer, records, True, cfg)  # bad data fails here, before the run dir
    heldout = _heldout_pairs(cfg, tokenizer)  # so does a bad eval_data file
    if not seqs:
        raise ValueError(f"no pair of {cfg.data!r} is left after truncation to max_length={cfg.max_length} "
                         f"(truncation_mode=keep_start drops pairs whose prompt alone fills it)")
    if is_distributed():
        from inpo.train.distributed import shard_policy

        policy = shard_policy(policy)
    run, ckpt = _begin_run(cfg, device)
    run.print(f"[inpo] {cfg.default_notes()}")
    run.n_params = sum(p.numel() for p in policy.parameters())
    run.tokenizer = tokenizer
    objective = cfg.make_objective()
    if ckpt is not None and ckpt["state"]["phase"] == "done":
        run.print("[inpo] offline run already complete; exporting the final model again")
        from inpo.train.checkpoint import load_model_weights

        load_model_weights(policy, ckpt["model"])
        _export(run, policy, tokenizer)
        return []
    if len(records) < n_records:
        run.print(f"[inpo] dropped {n_records - len(records)} of {n_records} pairs whose prompt alone fills "
                  f"max_length={cfg.max_length} (truncation_mode=keep_start, as TRL)")
    logps_path = run.out / "iter_000" / "logps.safetensors"
    t0 = time.perf_counter()
    if logps_path.is_file():
        logps = _load_tensors(logps_path)
    else:
        logps = {"ref": precompute_logps(ref, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)}
        logps["iterate"] = logps["ref"]
        if run.is_main:
            _save_tensors(logps_path, logps)
    precompute_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with _progress(cfg) as progress:
        run.progress = progress
        summary = train_phase(run, policy, seqs, objective.side_inputs(logps, records), objective, iteration=0,
                              start_step=ckpt["state"]["iter_step"] if ckpt else 0, resume_ckpt=ckpt)
    run.progress = None
    save_checkpoint(run.out, model=policy, state={"iteration": 0, "phase": "done", "global_step": run.global_step,
                                                  "fingerprint": run.fingerprint}, keep=cfg.keep_checkpoints,
                    tokenizer=tokenizer)
    rec = {"kind": "iteration", "iteration": 0, "pairs": len(records), "oracle_queries": 0,
           "precompute_s": precompute_s, "train_s": time.perf_counter() - t0, "step": run.global_step,
           "final_loss": summary["last"].get("loss")}
    if heldout is not None:
        rec.update(_heldout_pair_metrics(cfg, ref, policy, objective, *heldout))
    run.log(rec)
    _export(run, policy, tokenizer)
    run.reporter.close()
    return [rec]


def _heldout_pairs(cfg, tokenizer):
    """``(seqs, records)`` of the held-out pairs ``eval_data`` (TRL formats and truncation as for data), or None."""
    if not cfg.eval_data:
        return None
    from inpo.data.pairs import load_pairs

    return training_sequences(tokenizer, load_pairs(cfg.eval_data), True, cfg)


def _heldout_pair_metrics(cfg, ref, policy, objective, seqs, held) -> dict:
    """TRL's eval metrics on the held-out pairs ``eval_data`` (TRL's eval_dataset): ``eval_loss`` (the objective's
    mean loss) and ``eval_rewards/*``, ``eval_logps/*`` for the trained policy against π_ref (π_t = π_ref offline).
    Collective under FSDP (every rank scores every held-out sequence)."""
    from inpo.train.reporting import pair_metric_sums, trl_metrics

    ref_l = precompute_logps(ref, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
    pol_l = precompute_logps(policy, seqs, max_tokens=cfg.max_tokens, impl=cfg.impl)
    side = objective.side_inputs({"ref": ref_l, "iterate": ref_l}, held)
    lengths = torch.tensor([float(len(y)) for _, y in seqs]) if objective.needs_lengths else None
    loss = objective(pol_l, side.get("ref_logps"), side.get("anchor_logps"), lengths=lengths)
    trl = trl_metrics(pair_metric_sums(objective, pol_l, side).tolist(), len(held))
    return {"eval_loss": float(loss), "eval_pairs": len(held), **{f"eval_{k}": v for k, v in trl.items()}}


def run_training(config: TrainConfig) -> list[dict]:
    """Online iterations, or offline training when ``config.data`` names a JSONL file. ``StopRun`` at
    ``max_steps`` propagates after its checkpoint; so does :class:`~inpo.train.loop.Interrupted` after SIGINT /
    SIGTERM (the run stops at the next step boundary with a checkpoint). The output directory's lock is released
    on the way out, whatever happens."""
    if config.output:  # before the model loads: an output we could not use fails in a second, nothing touched
        out = Path(config.output)
        _on_main(lambda: (check_output_dir(out, resume=config.resume, overwrite=config.overwrite),
                          probe_run_lock(out)))
    with graceful_stop():
        return run_offline(config) if config.data else run_online(config)
