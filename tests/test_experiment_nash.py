"""The Nash-level LM experiment's code path at its --quick size (bench/experiment_nash.py)."""

import json

import pytest

from bench import experiment_nash as nash


def test_quick_tier_writes_every_artifact(tmp_path):
    out = tmp_path / "nash"
    assert nash.main(["--quick", "--out", str(out), "--workers", "1", "--methods", "inpo,onpo,sppo"]) == 0
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    required = {"method", "beta", "alpha", "seed", "iteration", "exploitability", "exploitability_ci_low",
                "exploitability_ci_high", "pool_exploitability", "win_rate_vs_ref", "oracle_queries"}
    assert rows and all(required <= set(r) for r in rows)
    assert {r["method"] for r in rows} == {"inpo", "onpo", "sppo"}
    assert {r["iteration"] for r in rows} == {0, 1}
    for r in rows:
        assert -1.0 <= r["exploitability"] <= 1.0
        assert r["exploitability_ci_low"] <= r["exploitability"] <= r["exploitability_ci_high"] + 1e-12
        # the pool holds only responses, the feature space every (quality, style): its best response is at least
        # as strong, and the pool holds the method's own samples (so its estimate is >= 0 up to the ½ diagonal)
        assert r["pool_exploitability"] <= r["exploitability"] + 1e-9
        assert r["pool_exploitability"] >= -1e-9
        if r["iteration"] == 1:
            assert r["oracle_queries"] > 0
    # π_ref (iteration 0) is the same policy with the same eval samples for every method of a seed
    ref = {r["method"]: r["exploitability"] for r in rows if r["iteration"] == 0}
    assert len(set(ref.values())) == 1
    text = (out / "summary.md").read_text()
    assert "Round robin" in text and "inpo" in text
    for png in ("exploitability_vs_iteration.png", "exploitability_vs_queries.png", "round_robin.png",
                "style_quality.png"):
        assert (out / png).stat().st_size > 1000


def test_collapse_rule_and_tuning_pick():
    rows = [{"method": "dpo_iterative", "setting": "cyclic", "seed": 0, "iteration": 3, "win_rate_vs_ref": 0.16},
            {"method": "inpo", "setting": "cyclic", "seed": 0, "iteration": 3, "win_rate_vs_ref": 0.6}]
    assert nash._collapsed(rows) == {("dpo_iterative", "cyclic", 0)}
    res = [{"method": "inpo", "value": v, "iterations": [{"exploitability": e}]}
           for v, e in ((0.1, 0.5), (0.25, 0.2), (0.5, 0.3), (0.25, 0.3))]
    assert nash.tune(res) == {"inpo": 0.25}


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        nash.main(["--methods", "inpo,nope"])
    assert "nope" in capsys.readouterr().err


def test_paired_differences_pair_by_seed_and_prompt_and_skip_collapsed():
    def row(method, seed, it, per):
        return {"method": method, "setting": "cyclic", "seed": seed, "iteration": it, "per_prompt_exploitability": per}

    rows = [row("inpo", 0, 0, [0.8, 0.6]), row("inpo", 0, 1, [0.5, 0.3]),
            row("inpo", 1, 0, [0.9, 0.7]), row("inpo", 1, 1, [0.7, 0.5]),
            row("dpo_iterative", 0, 1, [0.6, 0.4]), row("dpo_iterative", 1, 1, [0.1, 0.1]),
            row("inpo", 2, 1, [0.0, 0.0])]  # a seed dpo lacks: not paired
    # seed 1's dpo run collapsed: only seed 0 pairs, dpo − inpo = +0.1 on both prompts
    m, lo, hi, n = nash.paired_differences(rows, {("dpo_iterative", "cyclic", 1)}, "cyclic", "dpo_iterative", "inpo", 1)
    assert n == 1 and abs(m - 0.1) < 1e-12 and abs(lo - 0.1) < 1e-12 and abs(hi - 0.1) < 1e-12
    # final − π_ref of inpo: seeds 0 and 1 (seed 2 has no iteration 0): −0.3 and −0.2
    m, lo, hi, n = nash.paired_differences(rows, set(), "cyclic", "inpo", None, 1)
    assert n == 2 and abs(m + 0.25) < 1e-12 and lo <= -0.25 <= hi
    lines = nash.paired_table(rows, set(), "cyclic", 1)
    assert any(x.startswith("| dpo_iterative |") and "(2)" in x for x in lines)
    assert nash.paired_differences(rows, set(), "style", "inpo", None, 1) is None


def test_tuning_table_marks_the_pick_and_grid_edges():
    rows = [{"method": "inpo", "eta": v, "final_exploitability": e} for v, e in ((0.1, 0.7), (0.25, 0.6), (0.5, 0.8))]
    rows += [{"method": "ipo", "beta": v, "final_exploitability": e} for v, e in ((0.1, 0.5), (0.25, 0.6), (0.5, 0.7))]
    lines = nash.tuning_table(rows)
    inpo = next(x for x in lines if x.startswith("| inpo |"))
    ipo = next(x for x in lines if x.startswith("| ipo |"))
    assert "**0.25: 0.600 (1)**" in inpo and "†" not in inpo
    assert "**0.1: 0.500 (1)** †" in ipo
    assert nash.tuning_table([]) == []
