# The Triton kernels live in the top-level folder `kernels/` but are installed as `inpo.kernels`:
# a top-level import named `kernels` would shadow the unrelated package transformers probes for.
# The C++ sources in `csrc/` ship as data under `inpo/csrc` (the JIT fallback builds from them).
#
# The native CPU head (csrc/fused_head.cpp) is built here, at install time, with torch's cpp_extension
# (CppExtension + BuildExtension, as the field's kernel packages do) into inpo/_native_head_<key>.so, <key>
# naming the sources, flags, torch version and CPU (inpo/ops/native_build.py). That needs the torch the package
# will run with, so it happens only when torch is importable by this build:
#     pip install --no-build-isolation -e .      (what `make setup` runs)
# Under pip's default build isolation torch is NOT importable (build-system.requires deliberately does not list
# torch: it would download a fresh multi-GB torch into the isolated build env), and the package installs without
# the library; it is then built on first use (JIT fallback). No compiler: the same, with one warning here.
# INPO_NO_NATIVE_BUILD=1 skips the build.
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _note(msg: str) -> None:
    print(f"[inpo setup] {msg}", file=sys.stderr, flush=True)


def _native_build():
    spec = importlib.util.spec_from_file_location("_inpo_native_build", HERE / "inpo" / "ops" / "native_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def native_extension_kwargs() -> dict:
    """ext_modules + cmdclass for the native head, or {} (with the reason on stderr) when it cannot be built."""
    if os.environ.get("INPO_NO_NATIVE_BUILD", "") not in ("", "0"):
        _note("INPO_NO_NATIVE_BUILD set: not building the native CPU head")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _note("torch is not importable in this build environment (pip's build isolation?): the native CPU head "
              "is not built now and will JIT-build at first use; `pip install --no-build-isolation -e .` with "
              "torch installed builds it at install time")
        return {}
    nb = _native_build()
    sources = [HERE / "csrc" / n for n in nb.SOURCE_NAMES]
    if not all(s.is_file() for s in sources):
        _note(f"native head sources missing ({[str(s) for s in sources]}): not building it")
        return {}
    key = nb.build_key(sources, torch.__version__)
    for old in (HERE / "inpo").glob(f"{nb.PREBUILT_PREFIX}*.so"):  # in-place builds of older sources / torch
        if not old.name.startswith(f"{nb.PREBUILT_PREFIX}{key}"):
            _note(f"removing {old.name}: built from other sources or another torch")
            old.unlink()
    ext = CppExtension(name=f"inpo.{nb.PREBUILT_PREFIX}{key}", sources=[str(s.relative_to(HERE)) for s in sources],
                       extra_compile_args=nb.CFLAGS, extra_link_args=nb.LDFLAGS)

    class OptionalBuildExtension(BuildExtension):
        """A failed compile (no compiler, no OpenMP...) leaves the package installable: one warning, and the
        runtime falls back to the JIT build or impl='torch'."""

        def build_extensions(self):  # torch's compiler checks run here, before any build_extension
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001 - CompileError, CalledProcessError, RuntimeError, OSError
                _note(f"WARNING: could not build the native CPU head ({type(exc).__name__}: {exc}); inpo installs "
                      f"without it and falls back to a JIT build or impl='torch' at run time")
                self.extensions = []  # nothing to copy into the wheel / the source tree

    try:
        import ninja  # noqa: F401
        use_ninja = True
    except ImportError:
        use_ninja = False
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=use_ninja)}}


setup(
    packages=find_packages(include=["inpo", "inpo.*"]) + ["inpo.kernels", "inpo.csrc"],
    package_dir={"inpo.kernels": "kernels", "inpo.csrc": "csrc"},
    **native_extension_kwargs(),
)
