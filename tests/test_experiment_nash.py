"""The Nash-level LM experiment (bench/experiment_nash.py, bench/experiment_nash_report.py): the protocol's pieces
on synthetic inputs, and the whole code path at its --quick size."""

import json
import math

import numpy as np
import pytest
import torch

from bench import experiment_nash as nash
from bench import experiment_nash_report as report
from inpo.games import style_game
from inpo.objectives import INPO, IPO


def test_calibration_picks_by_log_distance_and_widens_edges():
    values = nash.grid("inpo")
    assert len(values) == 5 and values[2] == nash.GROUPS["inpo"][1]
    assert all(b / a == pytest.approx(nash.GRID_FACTOR) for a, b in zip(values, values[1:]))
    # KL falls with η: 0.2 lands inside, 0.03 lands past the large end -> widen on the high side only
    kls = dict(zip(values, [0.5, 0.25, 0.1, 0.05, 0.04]))
    picks, widen, _ = nash.calibration_plan(kls, values, (0, 0))
    assert picks == {"large": values[1], "small": values[4]} and widen == (0, 1)
    wider = nash.grid("inpo", 0, 1)
    kls[wider[-1]] = 0.02
    picks, widen, _ = nash.calibration_plan(kls, wider, (0, 1))
    assert picks["small"] in (values[4], wider[-1])  # |log(0.04/0.03)| = 0.29 vs |log(0.02/0.03)| = 0.41: values[4]
    assert picks["small"] == values[4] and widen == (0, 1)  # interior now: no more widening
    # an edge pick at the widening limit stays (reported as an edge pick), the plan stops widening
    limit = (0, nash.MAX_WIDEN)
    top = nash.grid("inpo", *limit)
    picks, widen, _ = nash.calibration_plan({v: 10.0 * (len(top) - i) for i, v in enumerate(top)}, top, limit)
    assert picks["large"] == top[-1] and widen == limit  # every KL too large: the high edge, already at the limit
    # a saturated edge (the KL stopped moving with the parameter) is not widened: the optimiser limits the step
    flat = dict(zip(values, [0.16, 0.15, 0.1, 0.03, 0.01]))
    picks, widen, _ = nash.calibration_plan(flat, values, (0, 0))
    assert picks["large"] == values[0] and nash.saturated(flat, values, 0) and widen == (0, 0)
    assert nash.pick({0.1: 0.1, 0.2: 0.4}, 0.2) == 0.1
    # a pick far off its target (KL ∝ step²: a factor 4 in η is 16 in KL) gets the midpoint toward the target,
    # at most twice (factor 4 -> 2 -> √2 apart), and none once within OFF_TARGET
    steep = dict(zip(values, [0.5, 0.3, 0.1, 0.009, 0.0006]))  # small: 0.03 lies between values[2] and values[3]
    picks, _, more = nash.calibration_plan(steep, values, (0, 0))
    mid = round(math.sqrt(values[2] * values[3]), 10)
    assert more == {mid}
    steep[mid] = 0.05
    picks, _, more = nash.calibration_plan(steep, values, (0, 0), (mid,))
    assert picks["small"] == mid and more == {round(math.sqrt(mid * values[3]), 10)}  # 0.05 still > 1.5× off
    quarter = round(math.sqrt(mid * values[3]), 10)
    steep[quarter] = 0.045  # still off, but √2 apart from its neighbours now: no third refinement
    picks, _, more = nash.calibration_plan(steep, values, (0, 0), (mid, quarter))
    assert picks["small"] == quarter and more == set()
    steep[quarter] = 0.033
    assert nash.calibration_plan(steep, values, (0, 0), (mid, quarter))[2] == set()  # within 1.5×: done  # a tie on the log scale (a factor 2 either way): the smaller


def test_inpo_ratios_and_ipo_share_their_first_iteration():
    """Why one calibration serves INPO τ/η ∈ {1/3, 0.1, 0} and IPO: at t = 0, π_t = π_ref, so every INPO loss is
    (Δθ − Δref − 1/(2η))², IPO's with β = η."""
    g = torch.Generator().manual_seed(0)
    logps, ref = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    ipo = IPO(beta=0.3).losses(logps, ref)
    for ratio in (1 / 3, 0.1, 0.0):
        obj = INPO(eta=0.3, ratio=ratio)
        got = obj.losses(logps, ref if obj.needs_ref else None, ref if obj.needs_anchor else None)
        assert torch.allclose(got, ipo, atol=1e-12)


def test_rotation_measures_turns_in_the_best_response_direction():
    rock, paper, scissors = (np.eye(4)[i] * 0.6 + np.array([0.1, 0.1, 0.1, 0.1]) for i in range(3))
    a, d = report.rotation(rock)
    b, _ = report.rotation(paper)
    c, _ = report.rotation(scissors)
    assert a == pytest.approx(0.0, abs=1e-12) and d > 0.3
    assert report._turn(a, b) == pytest.approx(1 / 3) and report._turn(b, c) == pytest.approx(1 / 3)
    assert report._turn(c, a) == pytest.approx(1 / 3)  # scissors -> rock closes the cycle: +1 turn in all
    assert report._turn(b, a) == pytest.approx(-1 / 3)
    assert report.rotation(np.array([0.2, 0.2, 0.2, 0.4]))[1] == pytest.approx(0.0, abs=1e-12)


def _rows(setting="style", level="large"):
    """Two seeds × two arms × iterates 0..2 of synthetic per-prompt style counts (6 prompts, K = 4)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        folds = np.array([0, 1, 0, 1, 0, 1])
        for arm, p in (("inpo", [0.3, 0.3, 0.3, 0.1]), ("dpo", [0.7, 0.1, 0.1, 0.1])):
            for t in range(3):
                counts = rng.multinomial(4, p if t else [0.2, 0.2, 0.2, 0.4], size=6)
                rows.append({"setting": setting, "level": level, "arm": arm, "seed": seed, "iteration": t,
                             "folds": folds.tolist(), "per_prompt_style_counts": counts.tolist(),
                             "pooled": report.pooled_of(setting, counts, folds)})
    return rows


def test_endpoints_pair_arms_by_seed_and_prompt():
    rows = _rows()
    mean, lo, hi, per_seed = report.endpoint(rows, "style", "large", "dpo", "inpo", "last", n_bootstrap=300)
    expect = []
    for seed in (0, 1):
        pick = {r["arm"]: r for r in rows if r["seed"] == seed and r["iteration"] == 2}
        expect.append(pick["dpo"]["pooled"] - pick["inpo"]["pooled"])
    assert per_seed == pytest.approx(expect, abs=1e-12) and mean == pytest.approx(np.mean(expect), abs=1e-12)
    assert lo <= mean <= hi
    # the average iterate pools iterates 1..T; the worst iterate takes the max over the window (here all of them)
    avg = report.endpoint(rows, "style", "large", "inpo", None, "average", n_bootstrap=50)
    r1 = [r for r in rows if r["arm"] == "inpo" and r["seed"] == 0 and r["iteration"] in (1, 2)]
    summed = np.sum([r["per_prompt_style_counts"] for r in r1], axis=0)
    assert avg[3][0] == pytest.approx(report.pooled_of("style", summed, np.array(r1[0]["folds"])), abs=1e-12)
    worst = report.endpoint(rows, "style", "large", "inpo", None, "worst", n_bootstrap=50)
    assert worst[3][0] == pytest.approx(max(r["pooled"] for r in r1 if r["iteration"] == 2), abs=1e-12)
    assert report.endpoint(rows, "cyclic", "large", "dpo", "inpo", "last") is None


def test_pooled_of_is_the_style_games_exact_value_of_the_pooled_mix():
    counts = np.array([[3, 1, 0, 0], [0, 2, 2, 0], [1, 1, 1, 1]])
    mix = (counts / counts.sum(axis=1, keepdims=True)).mean(axis=0)  # prompts weighted equally
    from inpo.games import duality_gap

    assert report.pooled_of("style", counts, None) == pytest.approx(duality_gap(style_game(), mix), abs=1e-12)
    assert report.kl([10, 0, 0, 0], [10, 0, 0, 0]) == pytest.approx(0.0, abs=1e-15)
    assert math.isfinite(report.kl([10, 0, 0, 0], [0, 10, 0, 0]))


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        nash.main(["--arms", "inpo,nope"])
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nash.main(["--arms", "dpo"])
    assert "must include 'inpo'" in capsys.readouterr().err


def test_quick_tier_writes_every_artifact_and_resumes_from_its_cache(tmp_path):
    out = tmp_path / "nash"
    assert nash.main(["--quick", "--out", str(out), "--arms", "inpo,dpo"]) == 0
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    required = {"setting", "level", "arm", "seed", "iteration", "pooled", "pooled_ci_low", "pooled_ci_high",
                "crossfit", "crossfit_ci_low", "crossfit_ci_high", "plugin", "style_mix", "tv_to_uniform", "angle",
                "cum_turns", "kl_ref", "avg_pooled", "per_prompt_style_counts", "per_prompt_crossfit", "folds"}
    assert rows and all(required <= set(r) for r in rows)
    assert {r["arm"] for r in rows} == {"inpo", "dpo"} and {r["level"] for r in rows} == {"large", "small"}
    assert {r["iteration"] for r in rows} == set(range(nash.QUICK["iterations"] + 1))
    for r in rows:
        assert r["crossfit_ci_low"] - 1e-9 <= r["crossfit"] <= r["crossfit_ci_high"] + 1e-9
        counts = np.array(r["per_prompt_style_counts"])
        assert counts.shape == (nash.QUICK["n_eval"], 4) and (counts.sum(axis=1) == nash.QUICK["eval_k"]).all()
        # the file alone recomputes the pooled value (and so every bootstrap of summary.md)
        assert report.pooled_of(r["setting"], counts, np.array(r["folds"])) == pytest.approx(r["pooled"], abs=2e-6)
    ref = {(r["arm"], r["seed"]): r["pooled"] for r in rows if r["iteration"] == 0}
    for seed in {s for _, s in ref}:  # π_ref and its samples are shared by the arms of a seed
        assert len({v for (a, s), v in ref.items() if s == seed}) == 1
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all("predicted" in p or "error" in p for p in preds)
    calib = json.loads((out / "calibration.json").read_text())
    assert set(calib) == {"inpo", "dpo"} and all(set(c["picks"]) == set(nash.LEVELS) for c in calib.values())
    text = (out / "summary.md").read_text()
    for needle in ("## Protocol", "Primary endpoint", "**Verdict", "## Calibration", "Compute:"):
        assert needle in text
    for png in ("exploitability_vs_iteration.png", "style_mix.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000
    # everything is cached: a second call runs nothing and reports the same numbers
    (out / "summary.md").unlink()
    assert nash.main(["--quick", "--out", str(out), "--arms", "inpo,dpo", "--summary-only"]) == 0
    assert "**Verdict" in (out / "summary.md").read_text()
    assert [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()] == rows


def test_an_interrupted_run_resumes_from_its_checkpoints(tmp_path):
    """A run directory left by an interrupted run (here: one finished iteration of two) is resumed, not redone."""
    job = nash.Job("final", "style", "inpo", 0, 0.25, "large")
    cfg = nash.run_config(job, tmp_path, quick=True)
    first = nash.one_run(job, {**cfg, "iterations": 1}, str(tmp_path / "run"))
    assert len(first["iterations"]) == 1
    both = nash.one_run(job, cfg, str(tmp_path / "run"))
    assert len(both["iterations"]) == 2
    assert both["samples"][1] == first["samples"][1]  # iterate 1 kept from the first attempt, not re-sampled
    assert both["iterations"][0]["wall_s"] == first["iterations"][0]["wall_s"]


def test_deadline_stops_before_any_run_and_a_larger_shape_runs_from_its_own_model_folder(tmp_path, monkeypatch):
    out = tmp_path / "nash"
    # a deadline already past: nothing starts, the caller is told to run the same command again
    assert nash.main(["--quick", "--out", str(out), "--arms", "inpo", "--deadline-s", "0"]) == 3
    assert not (out / "runs.jsonl").exists()
    # the GPU recipe's path on a miniature shape: π_ref built per seed, exported, loaded with model=DIR
    mini = {"shape": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2), "sft": {"steps": 5}, "train": {"lr": 5e-4}}
    monkeypatch.setitem(nash.SHAPES, "small", mini)
    job = nash.Job("final", "style", "inpo", 0, 0.25, "large")
    cfg = nash.run_config(job, tmp_path, quick=True, shape="small")
    assert cfg["model"].endswith("small-seed0") and cfg["sampler"] == "hf" and "sft_seed" not in cfg
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(cfg["model"]).hidden_size == 64
    res = nash.one_run(job, {**cfg, "iterations": 1}, str(tmp_path / "run"))
    assert len(res["iterations"]) == 1 and len(res["samples"][1]) == nash.QUICK["n_eval"]
    assert nash.protocol_id(False, "small") != nash.protocol_id(False)


def test_worst_iterate_takes_the_late_window_only():
    rows = []
    for seed in (0, 1):
        for t in range(11):  # the window is t in [8, 15] ∩ [0, T]
            counts = np.tile([4, 0, 0, 0] if t == 5 else [1, 1, 1, 1], (6, 1))  # t = 5 is the worst, outside it
            if t == 9:
                counts = np.tile([2, 1, 1, 0], (6, 1))
            rows.append({"setting": "style", "level": "large", "arm": "inpo", "seed": seed, "iteration": t,
                         "folds": [0, 1] * 3, "per_prompt_style_counts": counts.tolist()})
    worst = report.endpoint(rows, "style", "large", "inpo", None, "worst", n_bootstrap=20)
    window = max(report.pooled_of("style", np.tile(c, (6, 1)), np.array([0, 1] * 3)) for c in ([1, 1, 1, 1],
                                                                                              [2, 1, 1, 0]))
    assert worst[3] == pytest.approx([window, window], abs=1e-12)
    assert window < report.pooled_of("style", np.tile([4, 0, 0, 0], (6, 1)), np.array([0, 1] * 3))


def test_rows_and_predictions_of_a_cyclic_run_from_its_samples():
    """The report's path for the secondary setting (style part + the whole game), without training: a fake run."""
    from inpo.data.prompts import default_prompts, task_spec

    words = {s: sorted(task_spec()["styles"][s])[0] for s in ("rock", "paper", "scissors")}
    prompts = default_prompts("eval")[:6]
    mixes = [("rock", "paper", "scissors", None), ("rock", "rock", "paper", None), ("rock", "rock", "rock", "paper")]
    samples = {str(t): [[f"the {words[s]} is here and it is fine." if s else "a plain answer that is fine."
                         for s in mixes[t]] for _ in prompts] for t in range(3)}
    result = {"prompts": prompts, "samples": samples,
              "iterations": [{"win_rate": 0.6, "oracle_queries": 66, "pairs": 6}] * 2}
    job = nash.Job("final", "cyclic", "dpo", 0, 0.5, "large")
    rows = report.run_rows(job, result)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all({"feature_crossfit", "feature_pooled"} <= set(r) for r in rows)  # quality plays a part in cyclic
    assert rows[2]["dominant"] == "rock" and rows[2]["unstyled"] == 0.0
    assert rows[2]["pooled"] > rows[0]["pooled"]  # collapsing onto rock is exploitable (paper beats it)
    pred = report.predict(job, rows)
    assert len(pred["predicted"]) == 3 and pred["realised_step"] > 0 and "fixed_point" not in pred  # DPO: none
    ipo = report.predict(nash.Job("final", "cyclic", "ipo", 0, 0.5, "large"), rows)
    assert ipo["fixed_point_tau"] == pytest.approx(ipo["realised_step"])  # IPO's fixed point: τ = β
