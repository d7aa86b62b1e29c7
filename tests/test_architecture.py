"""The package's shape (tools/check_shape.py): layers, imports inside functions, function size and complexity, and
how much measurement code the package carries. Each check is also shown to fail on a violation planted in a copy."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_shape  # noqa: E402

sys.path.remove(str(ROOT / "tools"))


def test_the_package_keeps_its_shape(capsys):
    rc = check_shape.main()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 problem(s)" in out


@pytest.fixture
def tree(tmp_path):
    """A copy of inpo/, kernels/ and the contracts to plant violations in."""
    for name in ("inpo", "kernels"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_layers_contract_is_kept_and_breaks_on_an_upward_import(tree):
    assert check_shape.layer_problems(tree) == []
    _append(tree / "inpo" / "utils" / "record.py", "\n\ndef _up():\n    from inpo.train import loop  # upward\n")
    problems = check_shape.layer_problems(tree)
    assert len(problems) == 1 and "inpo.utils.record -> inpo.train.loop" in problems[0], problems


def test_siblings_are_independent(tree):
    _append(tree / "inpo" / "generation" / "base.py", "\nimport inpo.oracles.base  # a sibling\n")
    problems = check_shape.layer_problems(tree)
    assert problems and "inpo.generation.base -> inpo.oracles.base" in problems[0], problems


def test_imports_inside_functions_are_counted(tree):
    assert check_shape.function_import_problems(tree / "inpo") == []
    _append(tree / "inpo" / "train" / "step.py", "\n\ndef _lazy():\n    from ..data import packing  # dodging\n")
    (problem,) = check_shape.function_import_problems(tree / "inpo")
    assert problem.startswith("inpo.train.step: 1 import(s) of inpo inside functions, 0 allowed: inpo.data")
    # a third-party module inside a function is how heavy optional dependencies stay lazy: not counted
    _append(tree / "inpo" / "ops" / "head.py", "\n\ndef _heavy():\n    import transformers\n")
    assert len(check_shape.function_import_problems(tree / "inpo")) == 1


def test_kernels_import_nothing_from_inpo(tree):
    assert check_shape.kernel_import_problems(tree / "kernels") == []
    _append(tree / "kernels" / "configs.py", "\nfrom inpo.ops import checks\n")
    (problem,) = check_shape.kernel_import_problems(tree / "kernels")
    assert "kernels/configs.py" in problem and "inpo.ops" in problem


def test_new_long_or_complex_functions_fail(tree):
    problems, notes = check_shape.shape_problems(tree / "inpo")
    assert problems == [] and notes == []
    body = "".join(f"    x += {i}\n" for i in range(61))
    _append(tree / "inpo" / "eval.py", f"\n\ndef long_one(x):\n{body}    return x\n")
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(15))
    _append(tree / "inpo" / "eval.py", f"\n\ndef branchy(x):\n{branches}    return x\n")
    problems, _ = check_shape.shape_problems(tree / "inpo")
    assert [p.split(":")[1] for p in problems] == ["long_one", "branchy"], problems
    assert "63 lines" in problems[0] and "complexity 16" in problems[1]
    # an allowed function that no longer offends is reported as stale, not silently kept
    _, notes = check_shape.shape_problems(tree / "inpo", allowed={**check_shape.ALLOWED, "inpo/x.py:gone": "why"})
    assert notes == ["inpo/x.py:gone: allowed but within the limits now: drop it from ALLOWED"]


def test_measurement_share_is_bounded(tree):
    assert check_shape.measurement_share(tree / "inpo") < check_shape.MAX_MEASUREMENT_SHARE
    lines = "".join(f"T{i} = {i}\n" for i in range(1500))
    (tree / "inpo" / "profiling").mkdir()
    (tree / "inpo" / "profiling" / "bench.py").write_text(lines)
    assert check_shape.measurement_share(tree / "inpo") > check_shape.MAX_MEASUREMENT_SHARE
