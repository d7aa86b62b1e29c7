"""`make train-real`'s record (bench/train_real.py) read from a run directory, its config and its prompts asset."""

from __future__ import annotations

import json

import pytest
import yaml

from bench import train_real
from inpo.data.prompts import load_prompts, real_prompts_path, split_prompts
from inpo.oracles import FormatOracle
from inpo.train.config import load_config

LIST = "Tips:\n1. Water the plants when dry.\n2. Give them bright light."
CUT = "Water the plants when the soil is dry and give them"
SINGLE = "Water the plants when the soil is dry, and give them bright light every day."


def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "iter_000").mkdir(parents=True)
    (run / "iter_001").mkdir()
    rows = [{"kind": "step", "loss": 1.0},
            {"kind": "iteration", "iteration": 0, "win_rate": 0.55, "win_rate_ci_low": 0.5, "win_rate_ci_high": 0.6,
             "pairs": 30, "oracle_queries": 160, "generate_s": 10.0, "wall_s": 30.0, "eval_n": 2},
            {"kind": "iteration", "iteration": 1, "win_rate": 0.6, "win_rate_ci_low": 0.52, "win_rate_ci_high": 0.68,
             "pairs": 31, "oracle_queries": 160, "generate_s": 9.0, "wall_s": 28.0, "eval_n": 2}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    x = ["How do I keep plants healthy?", "Why water plants?"]
    ref = [{"prompt": x[0], "responses": [CUT, CUT]}, {"prompt": x[1], "responses": [CUT, ""]}]
    after = [{"prompt": x[0], "responses": [LIST, SINGLE]}, {"prompt": x[1], "responses": [SINGLE, SINGLE]}]
    (run / "eval_ref_responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref))
    for t, rows_t in (("iter_000", ref), ("iter_001", after)):  # the examples and last profile: the last iterate's
        (run / t / "eval_responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_t))
    return run


def test_record_reads_win_rates_profiles_and_examples(tmp_path):
    rec = train_real.run_record(_run_dir(tmp_path), FormatOracle())
    assert [r["win_rate"] for r in rec["iterations"]] == [0.55, 0.6]
    assert rec["iterations"][1]["generate_s"] == 9.0 and "kind" not in rec["iterations"][0]
    ref, last = rec["profiles"]["ref"], rec["profiles"]["iter_001"]
    assert rec["profiles"]["iter_000"] == ref
    assert ref["answers"] == 4 and ref["complete"] == 0.0 and ref["formats"] == {
        "list": 0.0, "paragraphs": 0.0, "single": 0.75, "none": 0.25}
    assert last["complete"] == 1.0 and last["formats"]["list"] == 0.25 and last["formats"]["single"] == 0.75
    o = FormatOracle()
    want = sum(o.quality(p, y) for p, ys in [("How do I keep plants healthy?", [LIST, SINGLE]),
                                             ("Why water plants?", [SINGLE, SINGLE])] for y in ys) / 4
    assert last["quality"] == pytest.approx(want, abs=1e-4)
    ex = rec["examples"][0]
    assert ex["before"]["text"] == CUT and ex["after"]["text"] == LIST and ex["after"]["format"] == "list"
    assert ex["before"]["complete"] == 0.0 and ex["after"]["complete"] == 1.0
    md = train_real._markdown({**rec, "date": "d", "commit": "c", "command": "cmd", "wall_s": 1.0,
                               "loadavg_1m": [1, 2], "omp_num_threads": "1", "smoke": False})
    assert "| 1 | 0.600 [0.520, 0.680] | 31 | 160 | 28 |" in md and "*after* (list" in md


def test_record_only_writes_a_record_and_bad_arguments_stop_early(tmp_path, capsys):
    run = _run_dir(tmp_path)
    out = tmp_path / "rec.jsonl"
    assert train_real.main(["--record-only", "--output", str(run), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["bench"] == "train_real" and rec["wall_s"] is None and len(rec["iterations"]) == 2
    assert out.with_suffix(".md").is_file()
    assert train_real.main(["--output", str(run), "--out", str(out), "k"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err
    assert train_real.main(["--config", str(tmp_path / "no.yaml"), "--output", str(run), "--out", str(out)]) == 2
    assert "is not a file; nothing was run" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1


def test_smoke_overrides_and_train_argv():
    args = train_real._parser().parse_args(["--smoke", "--output", "r", "k", "3"])
    argv = train_real._train_argv(args)
    assert argv[:5] == ["--config", "configs/smollm2_real.yaml", "--output", "r", "--overwrite"]
    assert argv[argv.index("--k") + 1] == "3" and argv[argv.index("--max_new_tokens") + 1] == "16"


def test_the_shipped_config_and_prompts():
    raw = yaml.safe_load(open("configs/smollm2_real.yaml"))
    assert (raw["model"], raw["sampler"]) == ("smollm2", "auto")  # vLLM when installed
    cfg = load_config("configs/smollm2_real.yaml", {"model": "elsewhere"})  # every key valid (no fetch here)
    assert (cfg.oracle, cfg.objective, cfg.iterations) == ("format", "inpo", 3)
    assert cfg.prompts == "inpo/assets/real_prompts.txt" and real_prompts_path().samefile(cfg.prompts)
    pool = load_prompts(real_prompts_path())
    assert len(pool) == len(set(pool)) >= 200
    assert len(split_prompts(pool, "train")) >= cfg.n_prompts and len(split_prompts(pool, "eval")) >= cfg.n_eval
