"""The head bench's opt-in filter variant: timed only where ``sequence_logps`` takes ``grad_filter``, which it passes."""

from __future__ import annotations

import pytest

from bench import head as head_bench


def test_filter_variant_depends_on_the_api(monkeypatch):
    import inpo.ops

    def old_api(hidden, weight, labels, cu_seqlens, *, bias=None, ignore_index=-100, impl="auto", check_values=True):
        raise AssertionError("not called")

    seen = {}

    def new_api(hidden, weight, labels, cu_seqlens, *, bias=None, ignore_index=-100, impl="auto", check_values=True,
                grad_filter=None, deterministic=None):
        seen.update(impl=impl, grad_filter=grad_filter)
        return "logps"

    cpu = head_bench.torch.device("cpu")
    monkeypatch.setattr(inpo.ops, "sequence_logps", old_api)
    assert "no grad_filter argument" in head_bench.unavailable_reason("inpo-triton-filter", cpu)
    assert head_bench.gradient_mode("inpo-triton", 1e-3) == {"grad_filter": None, "exact": False}  # filtered default
    monkeypatch.setattr(inpo.ops, "sequence_logps", new_api)
    assert head_bench.unavailable_reason("inpo-triton-filter", cpu) is None
    assert head_bench.gradient_mode("inpo-triton", 1e-3) == {"grad_filter": None, "exact": True}
    assert head_bench.gradient_mode("inpo-triton-filter", 0.01) == {"grad_filter": 0.01, "exact": False}
    p = head_bench.make_problem(8, 4, 16, head_bench.torch.float32, cpu, "flat")
    assert head_bench._head_runner("inpo-triton-filter", 0.01)(p, p.hidden, p.weight) == "logps"
    assert seen == {"impl": "triton", "grad_filter": 0.01}


@pytest.mark.parametrize("value", ["0", "1", "-0.5"])
def test_grad_filter_flag_is_a_budget(value, capsys, tmp_path):
    out = tmp_path / "h.jsonl"
    assert head_bench.main(["--smoke", "--grad-filter", value, "--out", str(out)]) == 2
    assert "--grad-filter must be a budget in (0, 1)" in capsys.readouterr().err and not out.exists()


def test_this_tree_times_the_filter_and_records_it(tmp_path):
    """The exact-by-default API is in: the filter variant runs (interpreter, fp16) and says what it timed."""
    import json

    assert head_bench.accepts_grad_filter()
    out = tmp_path / "h.jsonl"
    assert head_bench.main(["--smoke", "--shapes", "64x16x256", "--impls", "inpo-triton,inpo-triton-filter",
                            "--dtype", "fp16", "--inputs", "peaked", "--out", str(out)]) == 0
    recs = {r["impl"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs["inpo-triton"]["exact"] is True and recs["inpo-triton"]["grad_filter"] is None
    assert recs["inpo-triton-filter"]["grad_filter"] == head_bench.GRAD_FILTER and not recs["inpo-triton-filter"]["exact"]
    assert all(r["value_ok"] and r["fwd_bwd_ms"] > 0 for r in recs.values())
