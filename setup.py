# The Triton kernels live in the top-level folder `kernels/` but are installed as `inpo.kernels`:
# a top-level import named `kernels` would shadow the unrelated package transformers probes for.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["inpo", "inpo.*"]) + ["inpo.kernels"],
    package_dir={"inpo.kernels": "kernels"},
)
