"""Build settings of the native CPU head, shared by ``setup.py`` (install-time build) and
:mod:`inpo.ops.native_impl` (loader + JIT fallback). Pure Python without imports of torch or inpo, so that
``setup.py`` can load this file by path before the package exists.

A build is identified by :func:`build_key`: the C++ sources, the compiler flags, the torch version it links
against and the CPU's feature flags (``-march=native``). The install-time library is named
``inpo/_native_head_<key>.so`` and the JIT fallback's build directory ``inpo_native_head_<key>``: a library built
for another torch, another revision of ``csrc/`` or another CPU is never loaded, it is simply not found.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

# -march=native: the exp/softmax passes are auto-vectorised (AVX2/AVX-512 where present); the build is
# per machine, hence the CPU's feature flags in the key.
# -fno-trapping-math / -fno-math-errno (torch builds with both): without them GCC keeps float compares
# and floor as branches / libm calls and those loops stay scalar. No -ffast-math: inf/NaN must behave.
CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-trapping-math", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]
SOURCE_NAMES = ("fused_head.cpp",)
PREBUILT_PREFIX = "_native_head_"  # inpo/_native_head_<key>.<python ext suffix>
JIT_PREFIX = "inpo_native_head_"


def cpu_fingerprint() -> str:
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


def build_key(sources, torch_version: str) -> str:
    """12 hex digits naming one build: sources' bytes, flags, torch version, CPU features."""
    h = hashlib.sha256()
    for s in sources:
        h.update(Path(s).name.encode() + b"\0" + Path(s).read_bytes() + b"\0")
    h.update(" ".join(CFLAGS + LDFLAGS).encode() + b"\0" + torch_version.encode() + b"\0" + cpu_fingerprint().encode())
    return h.hexdigest()[:12]
