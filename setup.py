# The Triton kernels live in the top-level folder `kernels/` but are installed as `inpo.kernels`:
# a top-level import named `kernels` would shadow the unrelated package transformers probes for.
# The C++ sources in `csrc/` ship as data under `inpo/csrc` so a wheel can JIT-build the native head too.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["inpo", "inpo.*"]) + ["inpo.kernels", "inpo.csrc"],
    package_dir={"inpo.kernels": "kernels", "inpo.csrc": "csrc"},
)
