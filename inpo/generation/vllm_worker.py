"""Runs inside vLLM's engine and worker processes: the in-place weight update of the run's one engine, and a prompt,
quiet exit of those processes. Imported by vLLM (``worker_extension_cls``, ``distributed_executor_backend``) and by
:mod:`inpo.generation.vllm`, never by the rest of the package.

* **Reload.** :meth:`InpoWorkerExtension.inpo_reload_weights` loads a checkpoint into the running model with vLLM's
  ``reload_weights``. vLLM warns "Failed to load weights" for every layer the checkpoint has nothing for: the rotary
  embedding (a computed cache, never in a checkpoint) and, with tied embeddings, the LM head (the checkpoint has no
  ``lm_head.weight``; its packed CPU copy is rebuilt here right after). Those two expected warnings are dropped
  during the reload; any other layer's still shows.
* **Exit.** vLLM's engine-core and worker processes tear their resources down (queues, shared memory, distributed
  state) and then exit through Python's interpreter teardown, which on CPU spends 4-8 s collecting the ~650k objects
  that torch, transformers and vLLM leave behind. vLLM gives a worker 5 s before it sends SIGTERM (and logs a
  warning), and the trainer waits for the engine process, so every shutdown took 11-18 s. :func:`install_fast_exit`
  runs the process's ``atexit`` handlers (vLLM's and the standard library's cleanup) and then ends the process with
  its exit status, skipping only that teardown: the memory goes back to the system either way.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

from vllm.v1.executor.multiproc_executor import MultiprocExecutor

__all__ = ["InpoWorkerExtension", "InpoExecutor", "install_fast_exit"]

_EXPECTED_UNLOADED = ("RotaryEmbedding",)  # computed buffers: no checkpoint holds them


class _DropExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" for the layers a checkpoint of this model has nothing for."""

    def __init__(self, layers: tuple[str, ...]):
        super().__init__()
        self.messages = {f"{name}: Failed to load weights" for name in layers}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


class InpoWorkerExtension:
    """Methods added to vLLM's worker, called by name through ``LLM.collective_rpc``."""

    def inpo_reload_weights(self, path: str) -> None:
        """Load the checkpoint in ``path`` into the running model, in place (vLLM's ``reload_weights``), then
        re-run the LM head's post-load processing: with tied embeddings the checkpoint has no ``lm_head.weight``,
        so vLLM's reload skips the head, and on CPU the head multiplies with a packed copy of the *old* embedding
        (measured: 6 nats per sequence off after one update on the default policy)."""
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        model = self.model_runner.get_model()
        config = self.model_runner.model_config.hf_config
        tied = bool(getattr(getattr(config, "get_text_config", lambda: config)(), "tie_word_embeddings", False))
        quiet = _DropExpectedReloadWarnings(_EXPECTED_UNLOADED + (("ParallelLMHead",) if tied else ()))
        logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        logger.addFilter(quiet)
        try:
            self.reload_weights(weights_path=path)
        finally:
            logger.removeFilter(quiet)
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if isinstance(module, ParallelLMHead) and method is not None:
                method.process_weights_after_loading(module)

    def inpo_install_fast_exit(self) -> None:
        install_fast_exit()


class InpoExecutor(MultiprocExecutor):
    """vLLM's multiprocess executor (what the CPU build uses) whose engine-core process and workers exit promptly."""

    def _init_executor(self) -> None:
        super()._init_executor()
        install_fast_exit()  # this process: the engine core
        self.collective_rpc("inpo_install_fast_exit")  # its workers


def install_fast_exit() -> None:
    """At exit, run the ``atexit`` handlers, flush, and ``os._exit`` with the status ``sys.exit`` was given, skipping
    the interpreter teardown (see the module doc). Only for vLLM's own child processes; idempotent."""
    if getattr(install_fast_exit, "installed", False):
        return
    install_fast_exit.installed = True
    status: list = [0]
    real_exit = sys.exit

    def record_exit(code=None):  # multiprocessing's child ends with sys.exit(exitcode)
        status[0] = code
        real_exit(code)

    def fast_exit() -> None:
        atexit.unregister(fast_exit)
        atexit._run_exitfuncs()  # every other handler, in the usual (LIFO) order
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing left to flush
                pass
        code = status[0]
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))

    sys.exit = record_exit
    atexit.register(fast_exit)
