"""Native CPU fused head: loading of ``csrc/fused_head.cpp`` and its torch-op glue.

The C++ source registers ``inpo::head_forward`` / ``inpo::head_backward`` with ``TORCH_LIBRARY``. It is built
at install time (``setup.py`` build_ext via ``torch.utils.cpp_extension``) into ``inpo/_native_head_<key>.so``,
``<key>`` naming the sources, flags, torch version and CPU (:mod:`inpo.ops.native_build`); this module loads
that library. Only when it is absent (an install without a compiler or without torch at build time, a newer
``csrc/`` in a checkout, another torch) does it JIT-build once, saying so, into its own directory
``<cache>/torch_extensions/inpo_native_head_<key>`` (``$INPO_CACHE_DIR``, else ``$TORCH_EXTENSIONS_DIR``, else
``~/.cache/inpo``), under a lock that records its owner: a lock left by a dead or long-gone builder is removed,
a live one is waited on for at most :data:`BUILD_WAIT_S` and then reported by path -- never a silent hang.
Then the fake (meta) kernels and the autograd formula are added with ``torch.library`` so the op works under
``torch.compile(fullgraph=True)``. ``is_available()`` never raises: a failed build warns once and the
``auto`` dispatch falls back to ``impl="torch"``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from inpo.ops.native_build import CFLAGS, JIT_PREFIX, LDFLAGS, PREBUILT_PREFIX, SOURCE_NAMES, build_key
from inpo.ops.transform import IDENTITY, LogitTransform

_PKG = Path(__file__).resolve().parents[1]  # the installed inpo package (holds the prebuilt library)
_REPO = _PKG.parent
# A checkout keeps the sources in <repo>/csrc; a wheel ships them as package data under inpo/csrc.
_CSRC = next((d for d in (_REPO / "csrc", _PKG / "csrc") if d.is_dir()), _REPO / "csrc")
SOURCES = tuple(_CSRC / n for n in SOURCE_NAMES)

DISABLE_ENV = "INPO_DISABLE_NATIVE"  # =1: never build/load (e.g. CI images without a compiler)
STALE_LOCK_S = 900  # a build takes ~1 min on 2 cores; a lock this old was left by a killed builder
BUILD_WAIT_S = 900  # how long to wait on a live builder's lock before giving up with the lock's path
LOCK_NAME = "inpo-build.lock"

_lock = threading.Lock()
_state: dict = {}  # "ok": bool, "error": str, "source": "prebuilt" | "jit" | "loaded" -- filled by _load()
_registered = False  # fake/autograd kernels are registered once per process


def _key() -> str:
    return build_key(SOURCES, torch.__version__)


def prebuilt_library() -> Path | None:
    """The install-time library matching these sources, this torch and this CPU (None when there is none)."""
    try:
        key = _key()
    except OSError:  # no sources: a prebuilt library cannot be matched to them
        return None
    found = sorted(_PKG.glob(f"{PREBUILT_PREFIX}{key}*.so"))
    return found[0] if found else None


def jit_build_dir() -> Path:
    """The JIT fallback's own build directory, keyed like the install-time library."""
    if os.environ.get("INPO_CACHE_DIR"):
        base = Path(os.environ["INPO_CACHE_DIR"]) / "torch_extensions"
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        base = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    else:
        base = Path.home() / ".cache" / "inpo" / "torch_extensions"
    return base / f"{JIT_PREFIX}{_key()}"


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists, owned by someone else (or not a pid we can judge)
    return True


def _stale_reason(lock: Path) -> str | None:
    """Why ``lock`` was left by a builder that is gone (None: it may be a live build)."""
    try:
        age = time.time() - lock.stat().st_mtime
        owner = json.loads(lock.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        owner = {}
    if age > STALE_LOCK_S:
        return f"{age:.0f} s old"
    pid = owner.get("pid")
    if isinstance(pid, int) and owner.get("host") == socket.gethostname() and not _pid_alive(pid):
        return f"its builder, pid {pid}, is gone"
    if not owner and age > 10:  # a lock without an owner record (torch's own, or a torn write)
        return f"no owner recorded, {age:.0f} s old"
    return None


@contextmanager
def _build_lock(build_dir: Path):
    """An exclusive lock file in ``build_dir`` that records its owner; stale ones are removed, a live one is
    waited on for at most BUILD_WAIT_S (then TimeoutError naming the lock)."""
    lock = build_dir / LOCK_NAME
    t0, said = time.monotonic(), False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            reason = _stale_reason(lock)
            if reason is not None:
                warnings.warn(f"removing stale native-head build lock {lock} ({reason})", RuntimeWarning,
                              stacklevel=3)
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() - t0 > BUILD_WAIT_S:
                raise TimeoutError(f"waited {BUILD_WAIT_S} s for the native-head build lock {lock} held by another "
                                   f"process ({lock.read_text(errors='replace')[:200]}); if no build is running, "
                                   f"delete that file") from None
            if not said:
                print(f"[inpo] waiting for another process compiling the native CPU head (lock {lock})",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(0.5)
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
        os.close(fd)
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _jit_build(build_dir: Path | None = None) -> Path:
    """Build the library into its own keyed directory (once; later calls find it) and return its path."""
    from torch.utils import cpp_extension

    build_dir = build_dir or jit_build_dir()
    name = build_dir.name
    lib = build_dir / f"{name}.so"
    if lib.is_file():
        return lib
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        if lib.is_file():  # built by the process we waited for
            return lib
        torch_lock = build_dir / "lock"  # torch's own baton; we hold ours, so this one is a killed build's
        if torch_lock.exists():
            warnings.warn(f"removing stale torch extension build lock {torch_lock}", RuntimeWarning, stacklevel=2)
            torch_lock.unlink(missing_ok=True)
        _ensure_ninja_on_path()
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja), and no install-time build of the "
                               "native head matches this checkout (pip install --no-build-isolation -e .)")
        print(f"[inpo] compiling the native CPU head (no install-time build matches this torch/source/CPU; "
              f"once; minutes on a small machine) into {build_dir}", file=sys.stderr, flush=True)
        cpp_extension.load(name=name, sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                           extra_ldflags=LDFLAGS, build_directory=str(build_dir), is_python_module=False,
                           verbose=False)
    return lib


def _build_and_load() -> str:
    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise FileNotFoundError(f"native head sources not found: {missing} (needs the repo checkout's csrc/)")
    lib = prebuilt_library()
    if lib is not None:
        try:
            torch.ops.load_library(str(lib))
            return "prebuilt"
        except OSError as exc:  # e.g. a library left by another build of torch: rebuild rather than fail
            warnings.warn(f"could not load the install-time native head {lib} ({exc}); building it instead",
                          RuntimeWarning, stacklevel=3)
    torch.ops.load_library(str(_jit_build()))
    return "jit"


def _load() -> bool:
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        try:
            if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                raise RuntimeError(f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
            source = "loaded"
            if not hasattr(torch.ops.inpo, "head_forward") or not _has_cpu_kernel():
                source = _build_and_load()
            _register_python_kernels()
            _state["ok"], _state["error"], _state["source"] = True, "", source
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


def load_source() -> str:
    """Where the loaded op came from: "prebuilt" (install time), "jit" (built at first use), "loaded" (already
    registered in this process), or "" when it is not loaded."""
    return _state.get("source", "")


# ---- torch.library glue: fake kernels and autograd ------------------------------------------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _head_forward_fake(hidden, weight, bias, labels, cu_seqlens, ignore_index, logit_scale=1.0, softcap=None):
    s = cu_seqlens.shape[0] - 1
    return (hidden.new_empty((s,), dtype=torch.float32),
            hidden.new_empty((hidden.shape[0],), dtype=_acc_dtype(hidden.dtype)))


def _head_backward_fake(grad_logps, hidden, weight, bias, labels, cu_seqlens, lse, ignore_index, output_mask,
                        logit_scale=1.0, softcap=None):
    need_h, need_w, need_b = output_mask

    def like(t, wanted):  # a fresh [0] tensor per unwanted gradient: outputs must not alias each other
        return torch.empty_like(t, memory_format=torch.contiguous_format) if wanted else hidden.new_empty((0,))

    return like(hidden, need_h), like(weight, need_w), like(bias, need_b and bias is not None)


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, cu_seqlens, ignore_index, logit_scale, softcap = inputs
    ctx.save_for_backward(hidden, weight, bias, labels, cu_seqlens, output[1])
    ctx.ignore_index, ctx.logit_scale, ctx.softcap = ignore_index, logit_scale, softcap
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1])  # lse is a by-product saved for backward, not an output to train


def _backward(ctx, grad_logps, _grad_lse):
    hidden, weight, bias, labels, cu_seqlens, lse = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    mask = [bool(need_h), bool(need_w), bool(need_b and ctx.has_bias)]
    dh, dw, db = torch.ops.inpo.head_backward(grad_logps, hidden, weight, bias, labels, cu_seqlens, lse,
                                              ctx.ignore_index, mask, ctx.logit_scale, ctx.softcap)
    return (dh if mask[0] else None, dw if mask[1] else None, db if mask[2] else None, None, None, None, None, None)


def _register_python_kernels() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("inpo::head_forward")(_head_forward_fake)
    torch.library.register_fake("inpo::head_backward")(_head_backward_fake)
    torch.library.register_autograd("inpo::head_forward", _backward, setup_context=_setup_context)
    _registered = True


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, cu_seqlens: Tensor, bias: Tensor | None = None,
                   *, ignore_index: int = -100, transform: LogitTransform = IDENTITY) -> Tensor:
    """[S] fp32 summed log-probs per packed sequence through the native op (differentiable).

    Arguments as in :func:`inpo.ops.sequence_logps` (already checked by the dispatcher; ``transform`` the model's
    logit transform, passed to the op as ``logit_scale`` and ``softcap``). Raises
    RuntimeError with the build error when the native head cannot be built here.
    """
    if not is_available():
        raise RuntimeError(f"impl='native' requested but the native CPU head is unavailable: {build_error()}")
    if hidden.device.type != "cpu":
        raise ValueError(f"impl='native' runs on CPU tensors only, got hidden on {hidden.device}; "
                         "use impl='triton' or 'torch' on GPU")
    return torch.ops.inpo.head_forward(hidden, weight, bias, labels, cu_seqlens, ignore_index, transform.logit_scale,
                                       transform.softcap)[0]
