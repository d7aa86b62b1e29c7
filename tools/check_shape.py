"""The shape of the package, checked by `make test` (tests/test_architecture.py) and runnable alone:

    .venv/bin/python tools/check_shape.py        # prints every problem; exit 1 if there is one

1. Layers: the import-linter contracts in ``.importlinter`` (kernels < ops < train < online < cli, the siblings,
   utils at the bottom; grimp counts imports inside functions like any other), and ``kernels/`` (installed as
   ``inpo.kernels``, outside the graph of ``inpo/``) importing nothing from inpo.
2. Imports inside functions: an ``inpo`` module imported inside a function is allowed only where
   :data:`FUNCTION_IMPORTS` says why (a heavy third-party module behind it), never to dodge a cycle. Third-party
   imports inside functions are not counted here (that is how heavy optional modules stay lazy).
3. Size and complexity: no function in ``inpo/`` over :data:`MAX_LINES` lines or cyclomatic complexity (radon) over
   :data:`MAX_COMPLEXITY`, except the entries of :data:`ALLOWED`, each with its reason. An entry that no longer
   offends is reported as stale (shrink the list); a new offender fails.
4. Measurement code left in the package (records, MFU: what training logs at run time) is at most
   :data:`MAX_MEASUREMENT_SHARE` of the package's source lines; the benches live in ``bench/``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "inpo"
KERNELS = ROOT / "kernels"
MAX_LINES, MAX_COMPLEXITY = 60, 15
MAX_MEASUREMENT_SHARE = 0.10
MEASUREMENT = ("inpo/profiling", "inpo/utils/record.py", "inpo/utils/mfu.py")  # measurement code in the package

# Imports of inpo modules inside functions: {importing module: (how many, why)}.
FUNCTION_IMPORTS: dict[str, tuple[int, str]] = {
    "inpo.ops.triton_impl": (4, "inpo.kernels imports triton: loaded only when impl=triton runs"),
    "inpo.models": (1, "inpo.models.fetch imports inpo.models back (a cycle), so the package loads it on use"),
    "inpo.models.fetch": (1, "convert needs gguf + transformers, heavy: loaded only when a model is converted"),
}

# Functions over the limits, each with its reason: {"path:qualname": reason}. New offenders fail.
ALLOWED: dict[str, str] = {
    "inpo/data/chat.py:normalize_pair": "one branch per TRL dataset format (standard/conversational, prompt in or out)",
    "inpo/data/packing.py:pack_sequences": "argument checks + the packing loop, one message per argument",
    "inpo/games/report.py:plot_gap_curves": "one figure, many series options (cc 16)",
    "inpo/games/sweep.py:sweep_report": "a report writer, straight-line prose (134 lines, cc 9)",
    "inpo/ops/checks.py:check_head_inputs": "one check per argument of the fused head, each with its own message",
    "inpo/oracles/synthetic.py:SyntheticIntransitiveOracle._features": "one feature per style rule of the oracle",
    "inpo/train/reporting.py:parse_report_to": "one branch per report_to spelling TRL accepts",
}


@dataclass(frozen=True)
class Function:
    key: str  # "inpo/x.py:Class.method"
    lines: int
    complexity: int


def functions(path: Path, base: Path = ROOT) -> list[Function]:
    """Every function and method of ``path`` (closures by their own name), with radon's cyclomatic complexity;
    keys are relative to ``base``."""
    from radon.complexity import cc_visit

    rel = path.relative_to(base).as_posix()
    out: list[Function] = []

    def walk(blocks, prefix: str) -> None:
        for b in blocks:
            if hasattr(b, "methods"):  # a class
                walk(b.methods, f"{prefix}{b.name}.")
            elif not (prefix == "" and getattr(b, "is_method", False)):  # methods come through their class
                out.append(Function(f"{rel}:{prefix}{b.name}", b.endline - b.lineno + 1, b.complexity))
                walk(getattr(b, "closures", []), f"{prefix}{b.name}.")

    walk(cc_visit(path.read_text(encoding="utf-8")), "")
    return out


def shape_problems(root: Path = PACKAGE, allowed: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes): functions over the limits that are not allowed; allowed ones that no longer offend."""
    allowed = ALLOWED if allowed is None else allowed
    offenders = {f.key: f for p in sorted(root.rglob("*.py")) for f in functions(p, root.parent)
                 if f.lines > MAX_LINES or f.complexity > MAX_COMPLEXITY}
    problems = [f"{k}: {f.lines} lines, complexity {f.complexity} (limits {MAX_LINES} lines, {MAX_COMPLEXITY}); "
                f"split it, or add it to ALLOWED with the reason" for k, f in offenders.items() if k not in allowed]
    notes = [f"{k}: allowed but within the limits now: drop it from ALLOWED" for k in allowed if k not in offenders]
    return problems, notes


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_in_functions(path: Path, root: Path) -> list[tuple[str, int]]:
    """(imported inpo module, line) of every ``import inpo...`` / ``from inpo... import`` inside a function,
    relative imports resolved."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if in_function and isinstance(child, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else [])) if child.level else child.module
                if target and (target == "inpo" or target.startswith("inpo.")):
                    found.append((target, child.lineno))
            elif in_function and isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names if a.name.split(".")[0] == "inpo")
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def function_import_problems(root: Path = PACKAGE, allowed: dict[str, tuple[int, str]] | None = None) -> list[str]:
    """Modules importing inpo modules inside functions beyond what :data:`FUNCTION_IMPORTS` allows."""
    allowed = FUNCTION_IMPORTS if allowed is None else allowed
    problems = []
    for path in sorted(root.rglob("*.py")):
        found = _imports_in_functions(path, root)
        module = _module_name(path, root)
        limit = allowed.get(module, (0, ""))[0]
        if len(found) > limit:
            where = ", ".join(f"{t} (line {n})" for t, n in found)
            problems.append(f"{module}: {len(found)} import(s) of inpo inside functions, {limit} allowed: {where}; "
                            f"import at the top (a cycle means a layer is wrong), or justify it in FUNCTION_IMPORTS")
    return problems


def kernel_import_problems(kernels: Path = KERNELS) -> list[str]:
    """``kernels/`` is the bottom of the compute stack: it imports nothing from inpo but itself."""
    problems = []
    for path in sorted(kernels.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                if name.split(".")[0] == "inpo" and not (name == "inpo.kernels" or name.startswith("inpo.kernels.")):
                    where = f"{path.relative_to(kernels.parent)}:{node.lineno}"
                    problems.append(f"{where}: kernels/ imports {name} (kernels import nothing above them)")
    return problems


def layer_problems(root: Path = ROOT, config: str = ".importlinter") -> list[str]:
    """The broken import-linter contracts of ``root/config`` over the ``inpo`` package in ``root`` (run in a fresh
    process, so the package analysed is the one in ``root``, whatever this process imported), or []."""
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    res = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())", "--config", config, "--no-cache"],
                         cwd=root, env=env, capture_output=True, text=True)
    if res.returncode == 0:
        return []
    report = (res.stdout + res.stderr).strip()
    return [f"import-linter: a contract of {config} is broken:\n{report[report.find('Broken contracts'):] or report}"]


def measurement_share(root: Path = PACKAGE) -> float:
    """Source lines (radon SLOC) of :data:`MEASUREMENT` over the whole package's."""
    from radon.raw import analyze

    sloc = {p.relative_to(root.parent).as_posix(): analyze(p.read_text(encoding="utf-8")).sloc
            for p in root.rglob("*.py")}
    measured = sum(n for k, n in sloc.items() if any(k == m or k.startswith(m + "/") for m in MEASUREMENT))
    return measured / max(1, sum(sloc.values()))


def main() -> int:
    problems = layer_problems() + kernel_import_problems() + function_import_problems()
    shape, notes = shape_problems()
    problems += shape
    share = measurement_share()
    if share > MAX_MEASUREMENT_SHARE:
        problems.append(f"measurement code is {share:.1%} of the package (limit {MAX_MEASUREMENT_SHARE:.0%}): "
                        f"benches belong in bench/")
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"check_shape: {len(problems)} problem(s); measurement code {share:.1%} of the package; "
          f"{len(ALLOWED)} allowed long/complex functions, {len(notes)} stale")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
