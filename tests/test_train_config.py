"""Config: defaults < YAML < CLI overrides; typed; unknown keys name the nearest valid one."""

import pytest

from inpo.train.config import TrainConfig, load_config, parse_overrides


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.002\nepochs: 3\nobjective: dpo\nbeta: 0.3\nn_prompts: null\n")
    cfg = load_config(f, parse_overrides(["--epochs", "5", "--max-steps=7", "--resume", "--output", "x"]))
    assert cfg.lr == 0.002 and cfg.epochs == 5 and cfg.max_steps == 7 and cfg.resume is True
    assert cfg.output == "x" and cfg.n_prompts is None
    obj = cfg.make_objective()
    assert obj.name == "dpo" and obj.beta == 0.3


def test_objective_defaults_and_overrides():
    cfg = load_config(None, {"eta": 0.5, "ratio": 0})
    obj = cfg.make_objective()
    assert obj.name == "inpo" and obj.eta == 0.5 and obj.ratio == 0.0
    assert TrainConfig().make_objective().eta > 0


@pytest.mark.parametrize("key, near", [("learnin_rate", "lr"), ("num_train_epoch", "epochs"), ("warmup", "warmup_ratio"),
                                       ("iteration", "iterations"), ("epoch", "epochs"), ("max_seq_length", "max_length")])
def test_unknown_key_names_nearest(key, near):
    with pytest.raises(ValueError, match=f"unknown config key {key!r}") as exc:
        load_config(None, {key: 1})
    if near:
        assert f"did you mean {near!r}" in str(exc.value)


def test_unknown_key_in_yaml_names_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epocs: 2\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*'epocs'.*did you mean 'epochs'"):
        load_config(f)


def test_bad_values():
    with pytest.raises(ValueError, match="epochs expects int"):
        load_config(None, {"epochs": "two"})
    with pytest.raises(ValueError, match="eta must be"):
        load_config(None, {"eta": -1})
    with pytest.raises(ValueError, match="objective must be one of"):
        load_config(None, {"objective": "ppo"})
    with pytest.raises(ValueError, match="k .* >= 2"):
        load_config(None, {"k": 1})
    with pytest.raises(FileNotFoundError):
        load_config("/nonexistent/c.yaml")
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_overrides(["positional"])


def test_cli_reports_errors(capsys):
    from inpo.online.cli import main

    assert main(["--output", "x", "--epochz", "1"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "--max-steps" in capsys.readouterr().out


def test_shipped_example_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files
    for f in files:
        load_config(f).make_objective()
