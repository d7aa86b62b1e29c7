"""Config: defaults < YAML < CLI overrides; typed; unknown keys name the nearest valid one."""

import pytest

from inpo.objectives import make_objective
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
    with pytest.raises(ValueError, match="epochs expects float"):
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
    from inpo.train.cli import main

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


# -- objective + objective_args; a key the objective does not use ------------------------------------------------

def test_objective_args_and_the_flat_keys_that_alias_them(tmp_path):
    """objective_args (YAML mapping, a command-line mapping, or objective_args.NAME) and the flat keys of older
    configs (eta, beta, ...) set the same parameters; later sources win key by key."""
    want = make_objective("dpo", beta=0.3, label_smoothing=0.1)
    for overrides in ({"objective": "dpo", "objective_args": {"beta": 0.3, "label_smoothing": 0.1}},
                      {"objective": "dpo", "beta": 0.3, "label_smoothing": 0.1},
                      parse_overrides(["--objective", "dpo", "--objective-args", "{beta: 0.3, label_smoothing: 0.1}"]),
                      parse_overrides(["--objective", "dpo", "--objective_args.beta", "0.3", "--label-smoothing", "0.1"])):
        assert load_config(None, overrides).make_objective() == want, overrides
    f = tmp_path / "c.yaml"
    f.write_text("objective: dpo\nobjective_args:\n  beta: 0.3\n  label_smoothing: 0.1\n")
    cfg = load_config(f, parse_overrides(["--beta", "0.4"]))
    assert cfg.make_objective() == make_objective("dpo", beta=0.4, label_smoothing=0.1)
    assert cfg.objective_args == {"beta": 0.4, "label_smoothing": 0.1}  # what config.yaml records: the given keys


def test_a_key_the_objective_does_not_use_is_refused():
    with pytest.raises(ValueError, match=r"beta is not used by objective 'inpo', which takes eta, ratio "
                                         r"\(beta is a parameter of dpo, ipo\)"):
        load_config(None, {"beta": 0.1})  # inpo is the default objective: --beta was silently unused before
    with pytest.raises(ValueError, match="ratio is not used by objective 'sppo', which takes eta"):
        load_config(None, {"objective": "sppo", "objective_args": {"ratio": 0.5}})
    with pytest.raises(ValueError, match="gamma is not used by objective 'dpo'"):
        load_config(None, {"objective": "dpo", "objective_args": {"gamma": 1.0}})
    with pytest.raises(ValueError, match="unknown config key 'gamma'"):
        load_config(None, {"gamma": 1.0})  # not a parameter of any objective: an unknown key
    with pytest.raises(ValueError, match="length_normalize must be true or false"):
        load_config(None, {"objective": "ipo", "length_normalize": 1})


def test_offline_refuses_objectives_that_need_the_online_loop():
    with pytest.raises(ValueError, match="'sppo' needs K scored samples per prompt.*offline, use dpo, inpo, ipo"):
        load_config(None, {"objective": "sppo", "data": "pairs.jsonl"})
    with pytest.raises(ValueError, match="'onpo' trains an auxiliary chain every iteration: online only"):
        load_config(None, {"objective": "onpo", "data": "pairs.jsonl"})


# -- TRL names --------------------------------------------------------------------------------------------------

def test_trl_training_argument_names_map_onto_ours():
    cfg = load_config(None, {"num_train_epochs": 0.5, "adam_epsilon": 1e-6, "save_steps": 100, "save_total_limit": 3,
                             "warmup_steps": 0.1, "max_steps": -1, "adam_beta1": 0.8, "optim": "adamw_torch"})
    assert (cfg.epochs, cfg.adam_epsilon, cfg.checkpoint_every, cfg.keep_checkpoints, cfg.warmup_ratio,
            cfg.warmup_steps, cfg.max_steps) == (0.5, 1e-6, 100, 3, 0.1, None, None)
    assert cfg.betas == [0.8, 0.95]  # adam_beta1 on top of the embedded task's betas ...
    assert load_config(None, {"model": "d", "adam_beta2": 0.98}).betas == [0.9, 0.98]  # ... or TRL's with a model
    assert load_config(None, {"warmup_steps": 5}).warmup_steps == 5  # >= 1: steps (transformers 5's rule)
    assert load_config(None, {"lr_scheduler_type": "cosine"}).lr_scheduler_type == "cosine"
    with pytest.raises(ValueError, match="lr_scheduler_type must be one of linear, cosine, constant"):
        load_config(None, {"lr_scheduler_type": "polynomial"})


@pytest.mark.parametrize("loss_type, objective", [("sigmoid", "DPO(beta=0.1, label_smoothing=0.0)"),
                                                  ("ipo", "IPO(beta=0.1, length_normalize=True)"),
                                                  (["ipo"], "IPO(beta=0.1, length_normalize=True)"),
                                                  ("sigmoid_norm",
                                                   "DPO(beta=0.1, label_smoothing=0.0, length_normalize=True)")])
def test_loss_type_means_trls_loss(loss_type, objective):
    """loss_type ipo is TRL 1.16's per-token IPO; objective ipo alone keeps the summed-log-prob IPO."""
    assert repr(load_config(None, {"model": "d", "loss_type": loss_type}).make_objective()) == objective
    assert repr(load_config(None, {"model": "d", "objective": "ipo"}).make_objective()) == "IPO(beta=0.1)"


def test_label_smoothing_that_trl_would_ignore_is_refused():
    with pytest.raises(ValueError, match="TRL 1.16's sigmoid loss ignores label_smoothing"):
        load_config(None, {"loss_type": "sigmoid", "label_smoothing": 0.1})
    assert load_config(None, {"objective": "dpo", "label_smoothing": 0.1}).make_objective().label_smoothing == 0.1
