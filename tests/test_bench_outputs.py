"""Every bench and the report check their output paths before any work (issue 23: `--out FILE/x.jsonl` used to run
the whole benchmark, then lose it to FileExistsError): a clear message naming the flag and the path, exit 2, and
the measuring function never called."""

from __future__ import annotations

import importlib

import pytest

# (module, the function that does the work, extra arguments that get past the other checks quickly)
BENCHES = [
    ("bench.head", "run", ["--smoke"]),
    ("bench.head_cpu", "run", ["--smoke"]),
    ("bench.step", "run", ["--smoke"]),
    ("bench.step_cpu", "run", ["--smoke"]),
    ("bench.generation", "run", ["--samplers", "hf"]),
    ("bench.iteration", "run", ["--smoke"]),
    ("bench.filter_error", "measure", []),
    ("bench.report", "build_report", []),
]


def _refuse_work(monkeypatch, module, name):
    def ran(*a, **k):
        raise AssertionError(f"{module.__name__}.{name} ran before the output path was checked")

    monkeypatch.setattr(module, name, ran)


@pytest.mark.parametrize("modname, work, extra", BENCHES, ids=[b[0] for b in BENCHES])
def test_out_under_a_file_is_refused_before_any_work(modname, work, extra, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(modname)
    _refuse_work(monkeypatch, module, work)
    blocker = tmp_path / "FILE"
    blocker.write_text("a user's file\n")
    out = blocker / "x.jsonl"
    assert module.main([*extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(out) in err and "which is a file" in err and "nothing was run" in err, err
    assert blocker.read_text() == "a user's file\n"


@pytest.mark.parametrize("flag, kind", [("--trace", "file"), ("--workdir", "folder")])
def test_other_output_flags_are_checked_too(flag, kind, tmp_path, monkeypatch, capsys):
    """bench.step's Chrome trace and bench.iteration's kept work folder, and the report's plots folder."""
    module = importlib.import_module("bench.step" if flag == "--trace" else "bench.iteration")
    _refuse_work(monkeypatch, module, "run")
    (tmp_path / "FILE").write_text("x")
    bad = tmp_path / "FILE" / ("t.json" if kind == "file" else "work")
    assert module.main(["--smoke", "--out", str(tmp_path / "ok.jsonl"), flag, str(bad)]) == 2
    assert flag in capsys.readouterr().err


def test_report_plots_dir_and_trace_suffix(tmp_path, monkeypatch, capsys):
    report = importlib.import_module("bench.report")
    _refuse_work(monkeypatch, report, "build_report")
    (tmp_path / "FILE").write_text("x")
    assert report.main(["--out", str(tmp_path / "R.md"), "--plots-dir", str(tmp_path / "FILE" / "p")]) == 2
    assert "--plots-dir" in capsys.readouterr().err
    step = importlib.import_module("bench.step")
    _refuse_work(monkeypatch, step, "run")
    assert step.main(["--smoke", "--trace", str(tmp_path / "trace.txt")]) == 2
    assert "trace must be a .json path" in capsys.readouterr().err


def test_vllm_sampler_checks_its_out_before_starting_an_engine(tmp_path):
    vllm_sampler = importlib.import_module("bench.vllm_sampler")
    (tmp_path / "FILE").write_text("x")
    with pytest.raises(SystemExit, match="--out .* which is a file"):
        vllm_sampler.main(["--out", str(tmp_path / "FILE" / "x.jsonl")])
