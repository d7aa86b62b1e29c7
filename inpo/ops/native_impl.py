"""Native CPU fused head: build/load of ``csrc/fused_head.cpp`` and its torch-op glue.

The C++ source registers ``inpo::head_forward`` / ``inpo::head_backward`` with ``TORCH_LIBRARY``; this
module JIT-builds it once (``torch.utils.cpp_extension.load``, ninja, cached under
``$TORCH_EXTENSIONS_DIR`` or torch's default; torch's file lock serialises concurrent builders), then adds
the fake (meta) kernels and the autograd formula with ``torch.library`` so the op works under
``torch.compile(fullgraph=True)``. ``is_available()`` never raises: a failed build warns once and the
``auto`` dispatch falls back to ``impl="torch"``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

_REPO = Path(__file__).resolve().parents[2]
# A checkout keeps the sources in <repo>/csrc; a wheel ships them as package data under inpo/csrc.
_CSRC = next((d for d in (_REPO / "csrc", Path(__file__).resolve().parents[1] / "csrc") if d.is_dir()), _REPO / "csrc")
SOURCES = (_CSRC / "fused_head.cpp",)
# -march=native: the exp/softmax passes are auto-vectorised (AVX2/AVX-512 where present); the build is
# per machine, so the extension name carries a hash of the CPU's feature flags (see _extension_name).
# -fno-trapping-math / -fno-math-errno (torch builds with both): without them GCC keeps float compares
# and floor as branches / libm calls and those loops stay scalar. No -ffast-math: inf/NaN must behave.
CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-trapping-math", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]

DISABLE_ENV = "INPO_DISABLE_NATIVE"  # =1: never build/load (e.g. CI images without a compiler)

_lock = threading.Lock()
_state: dict = {}  # "ok": bool, "error": str — filled by the first _load()
_registered = False  # fake/autograd kernels are registered once per process


def _cpu_fingerprint() -> str:
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags += line
                    break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _extension_name() -> str:
    # A cached build from another CPU (shared cache dir) must not be loaded with illegal instructions.
    return f"inpo_native_head_{_cpu_fingerprint()}"


def _ensure_ninja_on_path() -> None:
    """torch's JIT build runs `ninja` from PATH; the pip `ninja` wheel lives in the venv's bin, which is not
    on PATH when the venv's python is called directly (``.venv/bin/python``)."""
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # the PyPI wheel

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for d in candidates:
        if (d / "ninja").exists():
            os.environ["PATH"] = f"{d}{os.pathsep}{os.environ.get('PATH', '')}"
            return


STALE_LOCK_S = 900  # a build takes ~1 min on 2 cores; a lock this old was left by a killed builder


def _remove_stale_lock(cpp_extension) -> None:
    """torch's build lock is a plain file: a builder killed mid-build leaves it behind and every later
    process would wait on it forever. Remove it once it is clearly older than any real build."""
    try:
        lock = Path(cpp_extension._get_build_directory(_extension_name(), False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (AttributeError, OSError):  # no lock (the usual case) or torch moved its private helper
        return
    if age > STALE_LOCK_S:
        warnings.warn(f"removing stale torch extension build lock {lock} ({age:.0f} s old)", RuntimeWarning,
                      stacklevel=2)
        lock.unlink(missing_ok=True)


def _build_and_load() -> None:
    from torch.utils import cpp_extension

    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise FileNotFoundError(f"native head sources not found: {missing} (needs the repo checkout's csrc/)")
    _ensure_ninja_on_path()
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    _remove_stale_lock(cpp_extension)
    cpp_extension.load(name=_extension_name(), sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                       extra_ldflags=LDFLAGS, is_python_module=False, verbose=False)


def _load() -> bool:
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        try:
            if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                raise RuntimeError(f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
            if not hasattr(torch.ops.inpo, "head_forward") or not _has_cpu_kernel():
                _build_and_load()
            _register_python_kernels()
            _state["ok"], _state["error"] = True, ""
        except Exception as exc:  # compiler missing, build error, ...: never raise from is_available()
            _state["ok"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(f"inpo native CPU head unavailable ({_state['error'].splitlines()[0][:300]}); "
                          "falling back to impl='torch'", RuntimeWarning, stacklevel=3)
        return _state["ok"]


def _has_cpu_kernel() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("inpo::head_forward", "CPU")
    except Exception:
        return False


def is_available() -> bool:
    """True when the C++ head is built and loaded (builds it on the first call; cached afterwards)."""
    return _state["ok"] if "ok" in _state else _load()


def build_error() -> str:
    """Why the native head is unavailable ('' when it is available or not tried yet)."""
    return _state.get("error", "")


# ---- torch.library glue: fake kernels and autograd ------------------------------------------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _head_forward_fake(hidden, weight, bias, labels, cu_seqlens, ignore_index):
    s = cu_seqlens.shape[0] - 1
    return (hidden.new_empty((s,), dtype=torch.float32),
            hidden.new_empty((hidden.shape[0],), dtype=_acc_dtype(hidden.dtype)))


def _head_backward_fake(grad_logps, hidden, weight, bias, labels, cu_seqlens, lse, ignore_index, output_mask):
    need_h, need_w, need_b = output_mask

    def like(t, wanted):  # a fresh [0] tensor per unwanted gradient: outputs must not alias each other
        return torch.empty_like(t, memory_format=torch.contiguous_format) if wanted else hidden.new_empty((0,))

    return like(hidden, need_h), like(weight, need_w), like(bias, need_b and bias is not None)


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, cu_seqlens, ignore_index = inputs
    ctx.save_for_backward(hidden, weight, bias, labels, cu_seqlens, output[1])
    ctx.ignore_index = ignore_index
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1])  # lse is a by-product saved for backward, not an output to train


def _backward(ctx, grad_logps, _grad_lse):
    hidden, weight, bias, labels, cu_seqlens, lse = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    mask = [bool(need_h), bool(need_w), bool(need_b and ctx.has_bias)]
    dh, dw, db = torch.ops.inpo.head_backward(grad_logps, hidden, weight, bias, labels, cu_seqlens, lse,
                                              ctx.ignore_index, mask)
    return (dh if mask[0] else None, dw if mask[1] else None, db if mask[2] else None, None, None, None)


def _register_python_kernels() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("inpo::head_forward")(_head_forward_fake)
    torch.library.register_fake("inpo::head_backward")(_head_backward_fake)
    torch.library.register_autograd("inpo::head_forward", _backward, setup_context=_setup_context)
    _registered = True


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, bias: Tensor | None = None,
                   *, ignore_index: int = -100) -> Tensor:
    """[S] fp32 summed log-probs per packed sequence through the native op (differentiable).

    Arguments as in :func:`inpo.ops.sequence_logps` (already checked by the dispatcher). Raises
    RuntimeError with the build error when the native head cannot be built here.
    """
    if not is_available():
        raise RuntimeError(f"impl='native' requested but the native CPU head is unavailable: {build_error()}")
    if hidden.device.type != "cpu":
        raise ValueError(f"impl='native' runs on CPU tensors only, got hidden on {hidden.device}; "
                         "use impl='triton' or 'torch' on GPU")
    return torch.ops.inpo.head_forward(hidden, weight, bias, labels, cu_seqlens, ignore_index)[0]
