import os

# The Triton interpreter must be chosen before triton is first imported: the CPU tier runs every
# kernel under it. A GPU run keeps the compiled path.
if not os.environ.get("INPO_TEST_GPU_COMPILED"):
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
    except ImportError:  # pragma: no cover
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


_TRITON_MODULES = ("test_triton_head", "test_epilogue")  # every non-GPU test of these runs Triton on CPU tensors


def _runs_triton_on_cpu(item) -> bool:
    """The interpreter tier: Triton kernels on CPU tensors (every non-GPU test of the _TRITON_MODULES, and the
    impl="triton" cases of the parametrized head tests)."""
    if "gpu" in item.keywords:
        return False
    if item.module.__name__.rsplit(".", 1)[-1] in _TRITON_MODULES:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(v, str) and v == "triton" for v in params.values())


def _skip_vllm_tier_without_vllm(items) -> None:
    """The real-engine tier needs vLLM (`make test-vllm` installs the CPU build in its own venv)."""
    from inpo._optional import available

    if available("vllm"):
        return
    skip = pytest.mark.skip(reason="needs vllm: run `make test-vllm` (its own venv with vLLM's CPU build)")
    for item in items:
        if item.get_closest_marker("vllm") is not None:  # not item.keywords: it holds the path (a folder named vllm)
            item.add_marker(skip)


def pytest_collection_modifyitems(config, items):
    _skip_vllm_tier_without_vllm(items)
    if torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            # Triton decides interpreted vs compiled per process: with a GPU the kernels are compiled, and the
            # CPU tier's kernels cannot run. `make test` hides the GPU (CUDA_VISIBLE_DEVICES=) to run that tier.
            skip = pytest.mark.skip(reason="interpreter tier (Triton on CPU tensors): run it with the GPU hidden, "
                                           "CUDA_VISIBLE_DEVICES= (as `make test` does)")
            for item in items:
                if _runs_triton_on_cpu(item):
                    item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real model's converted fp32 folder (the `real` tier); skips when it is not cached (`make real-model`)."""
    from inpo.models import real_model

    try:
        return real_model("smollm2", fetch=False)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
