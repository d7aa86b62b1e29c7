"""`inpo game` and the games sweep write what they promise: results.json, report.md, a PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inpo.cli import main as inpo_main
from inpo.games.report import loglog_slope, mean_ci


def test_inpo_game_cli_writes_results_report_and_plot(tmp_path):
    out = tmp_path / "g"
    rc = inpo_main(["game", "--game", "rps", "--algos", "inpo,onpo,dpo,ipo,sppo,inpo_kl", "--iters", "60",
                    "--seeds", "3", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["curves"]) == {"inpo", "onpo", "dpo", "ipo", "sppo", "inpo_kl"}
    assert np.asarray(res["curves"]["inpo"]["avg"]).shape == (3, len(res["t"]))
    assert res["t"][-1] == 60 and res["env"]["torch"]
    report = (out / "report.md").read_text()
    assert "| onpo |" in report and "slope (avg)" in report
    png = out / "gap_vs_iteration.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_inpo_game_cli_sampled_mode_and_contexts(tmp_path):
    rc = inpo_main(["game", "--game", "random", "--n", "4", "--contexts", "2", "--algos", "inpo", "--iters", "3",
                    "--seeds", "2", "--mode", "sampled", "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "results.json").read_text())["contexts"] == 2


@pytest.mark.parametrize("argv, msg", [
    (["--algos", "inpo,nash"], "unknown algorithm 'nash'"),
    (["--iters", "0"], "--iters must be"),
    (["--step", "-1"], "--step must be > 0"),
])
def test_inpo_game_cli_rejects_bad_arguments(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as exc:
        inpo_main(["game", "--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_slope_and_ci_helpers():
    t = np.arange(1, 1001)
    assert loglog_slope(t, 3.0 * t ** -0.5) == pytest.approx(-0.5, abs=1e-9)
    assert loglog_slope(t, 0.2 / t) == pytest.approx(-1.0, abs=1e-9)
    m, lo, hi = mean_ci(np.random.default_rng(0).normal(1.0, 0.1, size=200))
    assert lo < 1.0 < hi and hi - lo < 0.05 and lo < m < hi


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path):
    from inpo.games.sweep import main as sweep_main

    assert sweep_main(["--out", str(tmp_path), "--iters", "30", "--seeds", "2", "--n", "5", "--quick"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert max(r["max_abs_diff"] for r in res["lemma5"] if r["algorithm"] in ("inpo", "onpo")) < 1e-8
    for name in ("report.md", "gap_vs_iteration.png", "schedule_ablation.png"):
        assert (tmp_path / name).exists()
