"""End-to-end training-step bench: ours vs TRL DPOTrainer(ipo, precomputed ref) vs our step with the naive head vs
our step with Liger's fused linear cross-entropy — same model, same data, one run, one device.

Model: a Llama-3.2-1B-shaped decoder (random init from a config: hidden 2048, 16 layers, GQA 32/8 heads, vocab
128256, tied embeddings). Data: random token pairs of ``seq_len`` tokens each (prompt = a quarter, shared by chosen
and rejected), so every system sees identical token counts and no padding. Precision as the trainer runs it: fp32
master weights, bf16 autocast on CUDA (TRL with ``bf16=True``, i.e. the same regime); fp32 on CPU.

Per system: an OOM sweep (micro-batch tokens doubling from one pair until ``torch.OutOfMemoryError``; every size that
fits is timed briefly and recorded as ``kind="sweep"``), then the main measurement at ``--micro-batch-tokens`` (or the
largest that fit) with warm-up, quantiles, peak memory, NVML energy/clocks and MFU (``kind="step"``). Records append
to ``bench/results/step-<device>.jsonl``. MFU is the trainer's (:mod:`inpo.utils.mfu`: model FLOPs over the board's
dense bf16 datasheet peak); where the board has no datasheet entry (CPU, an unknown GPU) it divides by the GEMM peak
measured in the same run instead, and ``mfu_peak_source`` says which. The measured peak is recorded either way.

The side inputs (π_ref / π_t log-probs) are random: their values do not change the cost of a step.

``python -m bench.step --smoke`` runs a tiny model on CPU in seconds (CI keeps the code path alive).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.lib.nvml import NvmlMonitor
from bench.lib.outputs import output_problem
from bench.lib.shapes import MODEL_SHAPES, model_config
from bench.lib.sweep import oom_sweep
from bench.lib.timing import (measure, measure_peak_flops, peak_memory_bytes, release_memory, reset_peak_memory,
                              summarize)
from bench.lib.trace import profile_to_chrome_trace
from inpo._optional import available, optional
from inpo.utils.mfu import matmul_params, mfu, peak_bf16_flops, train_flops
from inpo.utils.record import append_jsonl, device_slug, environment_info

SYSTEMS = ("inpo", "inpo-naive-head", "liger", "trl")

SKIPPED = "skipped"


@dataclass
class StepBenchConfig:
    """What ``python -m bench.step`` measures (CLI flags map one to one)."""

    model: str = "llama-3.2-1b"
    seq_len: int = 2048
    micro_batch_tokens: int = 16384
    accum: int = 2  # micro-batches per optimiser step (gradient accumulation)
    systems: tuple[str, ...] = SYSTEMS
    warmup: int = 2
    reps: int = 5
    sweep: bool = True
    sweep_limit_tokens: int = 1 << 20
    sweep_reps: int = 2
    objective: str = "inpo"
    impl: str = "auto"  # our fused head's impl for the "inpo" and "liger"-less systems (auto = triton on CUDA)
    attn: str = "auto"  # transformers attn_implementation of every system's model (see attn_implementation)
    lr: float = 1e-6
    out: str | None = None
    trace: str | None = None
    device: str | None = None
    seed: int = 0
    smoke: bool = False
    lengths: str = "fixed"  # "fixed": every sequence seq_len tokens; "variable": up to seq_len (make_variable_pairs)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.model not in MODEL_SHAPES:
            raise ValueError(f"model must be one of {sorted(MODEL_SHAPES)}, got {self.model!r}")
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4 tokens (a prompt and a response), got {self.seq_len}")
        if self.micro_batch_tokens < 2 * self.seq_len:
            raise ValueError(f"micro_batch_tokens must hold at least one pair (2·seq_len = {2 * self.seq_len} "
                             f"tokens), got {self.micro_batch_tokens}")
        for name in ("accum", "reps", "sweep_reps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.lengths not in LENGTHS:
            raise ValueError(f"lengths must be one of {list(LENGTHS)}, got {self.lengths!r}")
        if self.attn not in ATTN_CHOICES:
            raise ValueError(f"attn must be one of {list(ATTN_CHOICES)}, got {self.attn!r}")
        if self.trace is not None and not str(self.trace).endswith(".json"):
            raise ValueError(f"trace must be a .json path (Chrome trace format), got {self.trace!r}")
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad or not self.systems:
            raise ValueError(f"systems must be a non-empty subset of {list(SYSTEMS)}, got {list(self.systems)}")


def smoke_config(**overrides) -> StepBenchConfig:
    """Seconds on a CPU: tiny model, 64-token sequences, a 4-point sweep."""
    cfg = StepBenchConfig(model="tiny", seq_len=64, micro_batch_tokens=256, accum=2, warmup=1, reps=2,
                          sweep_limit_tokens=1024, sweep_reps=1, lr=1e-3, smoke=True)
    return replace(cfg, **overrides)


# ---- model and data ------------------------------------------------------------------------------------------

ATTN_CHOICES = ("auto", "inpo_varlen", "sdpa", "flex_attention", "flash_attention_2", "eager")


def attn_implementation(device: torch.device, choice: str = "auto") -> str:
    """``auto``: flash-attn varlen when it works on CUDA (packed documents without a mask), else ``inpo_varlen``
    (one causal sdpa call per packed document, inpo/ops/attention.py).
    Why not plain sdpa for the packed systems (ours, naive head, Liger): transformers turns packed position_ids
    into a materialised [N, N] block-causal mask, so attention costs the full N² of the micro-batch (not Σ s_i²)
    and the mask grows with N² in the OOM sweep, while TRL's padded rows take sdpa's is_causal path (TRL keeps
    sdpa when this resolves to inpo_varlen). ``flex_attention`` (block-sparse mask, compiled) is another
    mask-free choice; the chosen value is recorded as ``attn_implementation``."""
    if choice not in ATTN_CHOICES:
        raise ValueError(f"attn must be one of {ATTN_CHOICES}, got {choice!r}")
    from inpo.ops.attention import default_implementation, prepare

    return default_implementation(device) if choice == "auto" else prepare(choice)


def build_model(name: str, device: torch.device, seed: int, attn: str = "auto"):
    """Random-init causal LM from a shape config; fp32 master weights (the trainer autocasts the body to bf16)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = model_config(name)
    # Initialise on the device itself: a 1B random init on the host costs tens of seconds per sweep point.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation(device, attn),
                                                 dtype=torch.float32)
    return model.to(device)


def make_pairs(n_pairs: int, seq_len: int, vocab_size: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``2·n_pairs`` sequences of exactly ``seq_len`` tokens: pair i = (prompt_i + chosen_i, prompt_i + rejected_i),
    prompt = seq_len // 4 tokens. Ids avoid 0..3 (left for special tokens in the TRL harness's tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    p = max(1, seq_len // 4)
    r = seq_len - p
    seqs = []
    for _ in range(n_pairs):
        prompt = torch.randint(4, vocab_size, (p,), generator=g).tolist()
        for _ in range(2):
            seqs.append((prompt, torch.randint(4, vocab_size, (r,), generator=g).tolist()))
    return seqs


LENGTHS = ("fixed", "variable")
EOS_ID = 1  # the word-level tokenizer's </s>: TRL appends it to every response, so variable pairs end with it


def make_variable_pairs(n_pairs: int, max_len: int, vocab_size: int, seed: int, *,
                        min_prompt: int = 16) -> list[tuple[list[int], list[int]]]:
    """``2·n_pairs`` sequences of variable length, as real preference data has: pair i shares a prompt of
    uniform length in [min_prompt, max_len // 4]; chosen and rejected responses have independent uniform lengths
    in [8, max_len - prompt] (so every sequence fits ``max_len``), each ending with ``EOS_ID``. Mean sequence
    length ≈ 0.55·max_len. Ids avoid 0..3 (special tokens of the TRL harness's tokenizer)."""
    if max_len < 4 * min_prompt or max_len < 32:
        raise ValueError(f"max_len must be >= max(32, 4·min_prompt = {4 * min_prompt}) tokens, got {max_len}")
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n_pairs):
        p = int(torch.randint(min_prompt, max_len // 4 + 1, (1,), generator=g))
        prompt = torch.randint(4, vocab_size, (p,), generator=g).tolist()
        for _ in range(2):
            r = int(torch.randint(8, max_len - p + 1, (1,), generator=g))
            seqs.append((prompt, torch.randint(4, vocab_size, (r - 1,), generator=g).tolist() + [EOS_ID]))
    return seqs


def bench_pairs(cfg: StepBenchConfig, n_pairs: int) -> list[tuple[list[int], list[int]]]:
    """The bench's ``n_pairs`` pairs (``2·n_pairs`` sequences) for ``cfg.lengths``; the same for every system."""
    vocab = MODEL_SHAPES[cfg.model]["vocab_size"]
    if cfg.lengths == "variable":
        return make_variable_pairs(n_pairs, cfg.seq_len, vocab, cfg.seed)
    return make_pairs(n_pairs, cfg.seq_len, vocab, cfg.seed)


def _pairs_per_micro(cfg: StepBenchConfig, micro_tokens: int) -> int:
    return micro_tokens // (2 * cfg.seq_len)


def _objective(cfg: StepBenchConfig):
    """The objective with its defaults for a user's model (TRL's / the papers'); pairwise ones only."""
    from inpo.objectives import OBJECTIVES, objective_class

    cls = objective_class(cfg.objective)
    if not cls.pairwise:
        pairwise = sorted(n for n, c in OBJECTIVES.items() if c.pairwise)
        raise ValueError(f"objective must be one of {pairwise} (pairwise objectives), got {cfg.objective!r}")
    return cls()


# ---- one system = a factory: micro_batch_tokens -> (step closure, tokens per step, seq lens, cleanup) --------------

@dataclass
class Prepared:
    step: Callable[[], object]
    tokens_per_step: int
    seq_lens: list[int]
    cleanup: Callable[[], None] = lambda: None
    info: dict = field(default_factory=dict)


def _ours(cfg: StepBenchConfig, device: torch.device, micro_tokens: int, *, impl: str, head: str) -> Prepared:
    """Our trainer's step (``inpo.train.step.train_step``) on packed pairs; ``head="liger"`` swaps the fused head
    for Liger's fused linear cross-entropy (per-token, reduction="none") summed per sequence."""
    from inpo.data.packing import pack_sequences
    from inpo.train.optim import make_optimizer

    n_pairs = _pairs_per_micro(cfg, micro_tokens) * cfg.accum
    seqs = bench_pairs(cfg, n_pairs)
    batches = pack_sequences(seqs, max_tokens=micro_tokens, pairwise=True)
    model = build_model(cfg.model, device, cfg.seed, cfg.attn)
    optimizer = make_optimizer(model, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n_tok = torch.tensor([float(len(r)) for _, r in seqs])  # plausible log-probs: ~ -1 nat per response token
    side = {"ref_logps": -n_tok * (1 + torch.rand(len(seqs), generator=g)),
            "anchor_logps": -n_tok * (1 + torch.rand(len(seqs), generator=g))}
    objective = _objective(cfg)
    side = {k: v for k, v in side.items() if (objective.needs_ref if k == "ref_logps" else objective.needs_anchor)}
    from inpo.train.step import train_step

    head_loss = _liger_head_loss(objective) if head == "liger" else None  # None: the fused head

    def step():
        return train_step(model, batches, objective, optimizer, scheduler, side, impl=impl, head_loss=head_loss)

    def cleanup():
        nonlocal model, optimizer
        del model, optimizer

    from inpo.ops import resolve_impl

    info = {"impl": "liger-flce" if head == "liger" else resolve_impl(impl, device), "micro_batches": len(batches)}
    return Prepared(step, sum(b.n_tokens for b in batches), [len(s[0]) + len(s[1]) for s in seqs], cleanup, info)


def _liger_head_loss(objective):
    """Liger's fused linear cross-entropy as the step's head (:func:`inpo.train.step.train_step`'s ``head_loss``):
    Liger returns per-token NLL, so a sequence's log-prob is minus its segment sum; the loss math stays
    ``inpo.objectives``'."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    from inpo.ops import response_lengths
    from inpo.ops.naive import segment_sum

    flce = LigerFusedLinearCrossEntropyLoss(reduction="none", ignore_index=-100)

    def head_loss(head, batch, side):
        if head.softcap is not None or head.logit_scale != 1.0:  # Liger's loss has no logit transform
            raise ValueError("the Liger baseline supports models without a logit transform only")
        logps = -segment_sum(flce(head.weight, head.hidden, batch.labels, head.bias).float(), batch.cu_seqlens)
        lengths = response_lengths(batch.labels, batch.cu_seqlens) if objective.needs_lengths else None
        loss = objective(logps, side.get("ref_logps"), side.get("anchor_logps"), side.get("targets"), lengths=lengths)
        return loss, logps

    return head_loss


def _trl(cfg: StepBenchConfig, device: torch.device, micro_tokens: int) -> Prepared:
    """TRL ``DPOTrainer`` with ``DPOConfig(loss_type="ipo", precompute_ref_log_probs=True)`` on the same model and
    token ids (a word-level tokenizer maps id i <-> word ``t<i>``, so TRL's own tokenisation reproduces them).

    TRL owns its loop, so a "step" here runs ``trainer.train()`` for ``warmup + reps`` optimiser steps and a callback
    times each step with device syncs; ``step()`` returns those per-step times (ms) for the caller to summarise.
    The ref log-prob precompute happens in the trainer's constructor, outside the timed steps, as for ours.
    """
    trl = optional("trl", warn=False)
    datasets = optional("datasets", warn=False)
    from transformers import TrainerCallback

    b = _pairs_per_micro(cfg, micro_tokens)
    n_steps = cfg.warmup + cfg.reps
    vocab = MODEL_SHAPES[cfg.model]["vocab_size"]
    # Per TRL step b·accum pairs; with ``extra["trl_steps_per_train"]`` (the interleaved CPU bench) each
    # ``trainer.train()`` call is one pass over exactly the pairs of one of our steps.
    per_train = cfg.extra.get("trl_steps_per_train")
    n_steps = per_train or n_steps
    seqs = bench_pairs(cfg, b * cfg.accum * n_steps)
    tok = word_level_tokenizer(vocab)
    words = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    # TRL appends eos to chosen/rejected: drop our last response token so both see seq_len tokens.
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(0, len(seqs), 2):
        rows["prompt"].append(words(seqs[i][0]))
        rows["chosen"].append(" " + words(seqs[i][1][:-1]))
        rows["rejected"].append(" " + words(seqs[i + 1][1][:-1]))
    dataset = _in_memory_dataset(datasets, rows, f"inpo-step-bench-{cfg.seed}-{cfg.seq_len}-{len(seqs)}-{vocab}")
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize() if device.type == "cuda" else None
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize() if device.type == "cuda" else None
            times.append((time.perf_counter() - self.t0) * 1000.0)

    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"inpo-trl-bench-{os.getpid()}"
    args = trl.DPOConfig(output_dir=str(out_dir), loss_type="ipo", beta=0.1, precompute_ref_log_probs=True,
                         per_device_train_batch_size=b, gradient_accumulation_steps=cfg.accum, max_steps=n_steps,
                         learning_rate=cfg.lr, max_length=cfg.seq_len, bf16=device.type == "cuda",
                         optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
                         lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, logging_steps=10**6,
                         # TRL's configs default to gradient_checkpointing=True; our step keeps every activation,
                         # so recomputing TRL's forward would charge it ~1/3 more compute (and let it fit larger
                         # micro-batches in the OOM sweep): same regime for both.
                         gradient_checkpointing=False,
                         save_strategy="no", report_to="none", dataloader_num_workers=0, seed=cfg.seed,
                         use_cpu=device.type != "cuda")
    attn = attn_implementation(device, cfg.attn)
    attn = "sdpa" if attn == "inpo_varlen" else attn  # TRL pads its rows: it needs transformers' masks
    model = build_model(cfg.model, device, cfg.seed, attn)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             callbacks=[StepTimer()])

    def step():
        times.clear()
        trainer.train()
        return list(times)

    def cleanup():
        nonlocal model, trainer
        del model, trainer

    lens = [len(pr) + len(r) for pr, r in seqs]
    return Prepared(step, sum(lens) // n_steps, lens[:2 * b * cfg.accum], cleanup,
                    {"trl": trl.__version__, "per_device_train_batch_size": b, "runs_own_loop": True,
                     "attn_implementation": attn, "gradient_checkpointing": bool(args.gradient_checkpointing)})


def _in_memory_dataset(datasets, rows: dict, fingerprint: str):
    """``datasets.Dataset`` over an in-memory Arrow table with a given fingerprint. ``Dataset.from_dict`` would
    fingerprint the table by pickling it through dill, which fails with some dill/pyarrow pairs
    (``PicklingError: Can't pickle <class 'MonthDayNano'>``, seen with dill 0.4.1 + pyarrow 26); the data is
    generated from a seed, so the seed-derived name is a faithful fingerprint."""
    import pyarrow as pa

    return datasets.Dataset(pa.table(rows), fingerprint=fingerprint)


def word_level_tokenizer(vocab_size: int):
    """A tokenizer whose id i is the word ``t<i>`` (ids 0..3 are special: pad, eos, bos, unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
    vocab.update({f"t{i}": i for i in range(4, vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def skip_reason(system: str, device: torch.device) -> str | None:
    """Why a system cannot run here (None when it can). Optional baselines are skipped, never fatal."""
    if system == "trl":
        if not available("trl"):
            return "trl not installed — skipped"
        if not available("datasets"):
            return "datasets not installed (TRL needs it) — skipped"
    if system == "liger":
        if not available("liger_kernel"):
            return "liger-kernel not installed — skipped"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "liger-kernel needs a CUDA device (or TRITON_INTERPRET=1) — skipped"
    return None


def prepare(system: str, cfg: StepBenchConfig, device: torch.device, micro_tokens: int) -> Prepared:
    if system == "inpo":
        return _ours(cfg, device, micro_tokens, impl=cfg.impl, head="fused")
    if system == "inpo-naive-head":
        return _ours(cfg, device, micro_tokens, impl="naive", head="fused")
    if system == "liger":
        return _ours(cfg, device, micro_tokens, impl="auto", head="liger")
    if system == "trl":
        return _trl(cfg, device, micro_tokens)
    raise ValueError(f"system must be one of {list(SYSTEMS)}, got {system!r}")


# ---- measurement ----------------------------------------------------------------------------------------------

def _time_prepared(p: Prepared, system: str, device, warmup: int, reps: int):
    """Per-step timings (ms) of a prepared system: ours through ``measure``; TRL's from its callback."""
    if system == "trl":
        samples = p.step()
        if len(samples) <= warmup:
            raise RuntimeError(f"TRL ran {len(samples)} steps, expected {warmup + reps}")
        return summarize(samples[warmup:], method="trl-callback")
    return measure(p.step, device=device, warmup=0, reps=reps)  # warmed up by the caller, outside NVML


def _measure_point(system: str, cfg: StepBenchConfig, device, micro_tokens: int, *, warmup: int, reps: int,
                   peak: dict, nvml: bool) -> dict:
    reset_peak_memory(device)
    # TRL sizes its dataset and max_steps from warmup + reps, so the point's own counts go into its config.
    p = prepare(system, replace(cfg, warmup=warmup, reps=reps), device, micro_tokens)
    try:
        mon = NvmlMonitor() if nvml else None
        if system != "trl":  # TRL's warm-up steps run inside its own loop (and so inside the NVML window)
            for _ in range(warmup):
                p.step()
        if mon is not None:
            with mon:
                t = _time_prepared(p, system, device, warmup, reps)
        else:
            t = _time_prepared(p, system, device, warmup, reps)
        mem = peak_memory_bytes(device)
        seconds = t.median_ms / 1e3
        flops = train_flops(model_config(cfg.model), p.seq_lens)
        rec = {"micro_batch_tokens": micro_tokens, "tokens_per_step": p.tokens_per_step,
               "tokens_per_s": p.tokens_per_step / seconds, "model_tflops_per_step": flops / 1e12,
               "achieved_tflops": flops / seconds / 1e12, "mfu": mfu(flops, seconds, peak["mfu_peak_flops"]),
               "peak_mem_bytes": mem, **t.as_dict("step_"), **p.info}
        if mon is not None:
            # For ours NVML saw only the timed steps; TRL's window also holds its warm-up steps.
            window = warmup + reps if system == "trl" else reps
            rec.update(mon.summary(steps=window), nvml_steps=window)
        return rec
    finally:
        p.cleanup()
        del p
        release_memory(device)


def _trace(system: str, cfg: StepBenchConfig, device, path: str) -> str:
    p = prepare(system, cfg, device, cfg.micro_batch_tokens)
    try:
        return str(profile_to_chrome_trace(p.step, path, device=device, warmup=1))
    finally:
        p.cleanup()
        release_memory(device)


def run(cfg: StepBenchConfig, *, log: Callable[[str], None] = print) -> list[dict]:
    """Run the bench; append the records as they are made (a system's sweep, then its step record) and return
    them (skipped systems are logged, not recorded)."""
    cfg.validate()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment_info(device)
    out = Path(cfg.out or Path("bench/results") / f"step-{device_slug(env['device'])}.jsonl")
    peak = measure_peak_flops(device)
    datasheet = peak_bf16_flops(env["device"]) if device.type == "cuda" else None
    peak.update(mfu_peak_flops=datasheet or peak["peak_flops"], mfu_peak_source="datasheet" if datasheet else "measured")
    log(f"[bench step] {env['device']}: measured GEMM peak {peak['peak_tflops']:.1f} TFLOP/s "
        f"({peak['gemm_dtype']}, n={peak['gemm_n']}); model {cfg.model} "
        f"({matmul_params(model_config(cfg.model)) / 1e6:,.1f} M matmul params), seq_len {cfg.seq_len}")
    common = {**env, "torch_threads": torch.get_num_threads(), "model": cfg.model, "seq_len": cfg.seq_len, "accum": cfg.accum, "objective": cfg.objective,
              "attn_implementation": attn_implementation(device, cfg.attn),
              "precision": "bf16-autocast/fp32-master" if device.type == "cuda" else "fp32", "smoke": cfg.smoke,
              **{k: v for k, v in peak.items() if k not in ("peak_flops", "mfu_peak_flops")},
              "mfu_peak_tflops": peak["mfu_peak_flops"] / 1e12}
    records: list[dict] = []
    for system in cfg.systems:
        why = skip_reason(system, device)
        if why:
            log(f"[bench step] {system}: {why}")
            continue
        max_fit, oom_reached = None, False
        if cfg.sweep:
            sweep_points: list[dict] = []

            def try_size(tokens: int, system=system) -> dict:
                return _measure_point(system, cfg, device, tokens, warmup=1, reps=cfg.sweep_reps, peak=peak,
                                      nvml=False)

            def on_point(tokens: int, point: dict, system=system, sweep_points=sweep_points) -> None:
                log(f"[bench step] {system} sweep: {tokens} tokens/micro-batch fits, "
                    f"{point['tokens_per_s']:.0f} tok/s, peak {_fmt_bytes(point['peak_mem_bytes'])}")
                sweep_points.append(point)

            res = oom_sweep(try_size, start=2 * cfg.seq_len, limit=cfg.sweep_limit_tokens, device=device,
                            on_point=on_point)
            max_fit, oom_reached = res.max_fit, res.oom_reached
            log(f"[bench step] {system}: largest micro-batch {max_fit} tokens "
                + (f"(OOM at {res.oom_at})" if oom_reached else f"(no OOM up to the {cfg.sweep_limit_tokens} limit)"))
            sweep_recs = [{**common, "system": system, "kind": "sweep", "max_tokens_before_oom": max_fit,
                           "oom_reached": oom_reached, **pt} for pt in sweep_points]
            if sweep_recs:  # written now: a main measurement cut off by the device's time limit keeps them
                append_jsonl(out, sweep_recs)
                records += sweep_recs
            if max_fit is None:
                log(f"[bench step] {system}: even one pair ({2 * cfg.seq_len} tokens) does not fit — no step record")
                continue
        micro = cfg.micro_batch_tokens if max_fit is None else min(cfg.micro_batch_tokens, max_fit)
        point = _measure_point(system, cfg, device, micro, warmup=cfg.warmup, reps=cfg.reps, peak=peak, nvml=True)
        rec = {**common, "system": system, "kind": "step", "max_tokens_before_oom": max_fit,
               "oom_reached": oom_reached, "sweep_limit_tokens": cfg.sweep_limit_tokens if cfg.sweep else None,
               **point}
        append_jsonl(out, rec)
        records.append(rec)
        mfu_txt = f"{rec['mfu'] * 100:.1f}%" if rec["mfu"] is not None else "n/a"
        log(f"[bench step] {system}: {rec['step_median_ms']:.1f} ms/step (p20 {rec['step_p20_ms']:.1f}, "
            f"p80 {rec['step_p80_ms']:.1f}), {rec['tokens_per_s']:.0f} tok/s, MFU {mfu_txt}, "
            f"peak {_fmt_bytes(rec['peak_mem_bytes'])}")
    if cfg.trace:
        system = next((s for s in cfg.systems if s != "trl" and not skip_reason(s, device)), None)
        if system is None:
            log("[bench step] --trace: no system of ours selected — no trace written")
        else:
            log(f"[bench step] trace of one {system} step: {_trace(system, cfg, device, cfg.trace)}")
    if records:
        log(f"[bench step] appended {len(records)} records to {out}")
    return records


def _check_full_size_on_cpu(cfg: StepBenchConfig) -> None:
    """The 1B bench on CPU would run for hours: refuse it with the two ways forward."""
    on_cpu = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    if on_cpu and cfg.model != "tiny":
        raise ValueError(f"--model {cfg.model} needs a CUDA GPU (no GPU here, or --device cpu given); "
                         "on CPU run `python -m bench.step --smoke` (or pass --model tiny)")


def _fmt_bytes(n) -> str:
    if n is None:
        return "n/a (CPU)"
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    d = StepBenchConfig()
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU in seconds (CI)")
    ap.add_argument("--model", choices=sorted(MODEL_SHAPES), default=None)
    ap.add_argument("--seq-len", type=int, default=None, help=f"tokens per sequence (default {d.seq_len})")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help=f"tokens per micro-batch of the main measurement (default {d.micro_batch_tokens})")
    ap.add_argument("--accum", type=int, default=None, help="micro-batches per optimiser step")
    ap.add_argument("--systems", default=None, help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--objective", default=None, help="a pairwise objective (default inpo; "
                    "_objective() refuses a per-sequence one)")
    ap.add_argument("--impl", default=None, choices=["auto", "triton", "torch", "native", "naive"],
                    help="our head's impl for the 'inpo' system (default auto)")
    ap.add_argument("--attn-implementation", dest="attn", default=None, choices=ATTN_CHOICES,
                    help="transformers attention of every system's model (default auto: flash_attention_2 when "
                         "flash-attn imports on CUDA, else sdpa)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-sweep", action="store_true", help="skip the OOM sweep")
    ap.add_argument("--sweep-limit-tokens", type=int, default=None, help="stop doubling past this many tokens")
    ap.add_argument("--trace", default=None, metavar="PATH.json", help="also write a Chrome trace of one step")
    ap.add_argument("--out", default=None, help="results file (default bench/results/step-<device>.jsonl)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in dict(model=args.model, seq_len=args.seq_len,
                                       micro_batch_tokens=args.micro_batch_tokens, accum=args.accum,
                                       objective=args.objective, impl=args.impl, attn=args.attn,
                                       warmup=args.warmup, reps=args.reps,
                                       sweep_limit_tokens=args.sweep_limit_tokens, trace=args.trace, out=args.out,
                                       device=args.device).items() if v is not None}
    if args.systems:
        overrides["systems"] = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if args.no_sweep:
        overrides["sweep"] = False
    try:
        cfg = smoke_config(**overrides) if args.smoke else replace(StepBenchConfig(), **overrides)
        if args.smoke and args.device is None:
            cfg = replace(cfg, device="cpu")
        cfg.validate()
        _check_full_size_on_cpu(cfg)
    except ValueError as exc:
        print(f"python -m bench.step: {exc}", file=sys.stderr)
        return 2
    problem = output_problem("python -m bench.step", files={"--out": cfg.out, "--trace": cfg.trace},
                             folders={"the results folder": None if cfg.out else "bench/results"})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
