"""The suite's tiers: on a CUDA machine the interpreter tier is skipped (it needs TRITON_INTERPRET=1, which a
process with compiled kernels cannot have), the GPU tier runs; on a CPU machine the GPU tier is skipped."""

import types

from tests import conftest


class _Item:
    def __init__(self, module, gpu=False, params=None):
        self.module = types.SimpleNamespace(__name__=f"tests.{module}")
        self.keywords = {"gpu": True} if gpu else {}
        if params is not None:
            self.callspec = types.SimpleNamespace(params=params)
        self.markers = []
        self.marks = set()  # names of the item's own pytest markers (keywords also hold its path's folder names)

    def add_marker(self, m):
        self.markers.append(m)

    def get_closest_marker(self, name):
        return name if name in self.marks else None


def _items():
    return {"interp": _Item("test_triton_head"), "gpu": _Item("test_triton_head", gpu=True),
            "epilogue": _Item("test_epilogue"), "epilogue-gpu": _Item("test_epilogue", gpu=True),
            "head-triton": _Item("test_head", params={"impl": "triton", "dtype": object()}),
            "head-torch": _Item("test_head", params={"impl": "torch"}), "other": _Item("test_games")}


def _skipped(items):
    return {k for k, it in items.items() if it.markers}


def test_cuda_machine_skips_the_interpreter_tier(monkeypatch):
    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    items = _items()
    conftest.pytest_collection_modifyitems(None, list(items.values()))
    assert _skipped(items) == {"interp", "epilogue", "head-triton"}
    assert "CUDA_VISIBLE_DEVICES=" in items["interp"].markers[0].kwargs["reason"]


def test_cpu_machine_skips_the_gpu_tier(monkeypatch):
    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: False)
    items = _items()
    conftest.pytest_collection_modifyitems(None, list(items.values()))
    assert _skipped(items) == {"gpu", "epilogue-gpu"}


def test_cuda_machine_with_the_interpreter_forced_skips_nothing(monkeypatch):
    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    items = _items()
    conftest.pytest_collection_modifyitems(None, list(items.values()))
    assert _skipped(items) == set()


def test_the_vllm_tier_is_skipped_without_vllm_and_runs_with_it(monkeypatch):
    import inpo._optional

    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: False)
    for installed, skipped in ((False, {"vllm"}), (True, set())):
        monkeypatch.setattr(inpo._optional, "available", lambda name, v=installed: v)
        items = {"vllm": _Item("test_vllm"), "other": _Item("test_games"), "in-a-vllm-folder": _Item("test_games")}
        items["vllm"].keywords, items["vllm"].marks = {"vllm": True}, {"vllm"}
        items["in-a-vllm-folder"].keywords = {"vllm": 1}  # a checkout under a folder named vllm: not the tier
        conftest.pytest_collection_modifyitems(None, list(items.values()))
        assert _skipped(items) == skipped
        if skipped:
            assert "make test-vllm" in items["vllm"].markers[0].kwargs["reason"]
