"""End to end on micro configs: one online iteration writes metrics with the required keys and a loadable export;
offline JSONL training; bad inputs fail clearly."""

import json

import pytest
import torch

from inpo.online.cli import main as train_main

STEP_KEYS = {"step", "iteration", "loss", "margin", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes"}
ITER_KEYS = {"iteration", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "oracle_queries", "generate_s", "rank_s",
             "precompute_s", "train_s"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with the default tokenizer, saved like any local transformers model."""
    from transformers import LlamaForCausalLM

    from inpo.data.tokenizer import default_tokenizer
    from inpo.train.model import export_policy, tiny_llama_config

    tok = default_tokenizer()
    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return str(export_policy(LlamaForCausalLM(cfg), tok, tmp_path_factory.mktemp("tiny") / "model"))


def micro_args(model_dir, out, *extra):
    return ["--model", model_dir, "--output", str(out), "--iterations", "1", "--n-prompts", "6", "--k", "3",
            "--max-new-tokens", "6", "--n-eval", "4", "--eval-k", "1", "--batch-pairs", "2", "--epochs", "1",
            "--n-bootstrap", "50", "--impl", "torch", "--progress", "false", "--threads", "1", *extra]


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_one_online_iteration_end_to_end(model_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main(micro_args(model_dir, out)) == 0
    recs = read_metrics(out)
    steps = [r for r in recs if r["kind"] == "step"]
    iters = [r for r in recs if r["kind"] == "iteration"]
    assert steps and len(iters) == 1
    for r in steps:
        assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert ITER_KEYS <= set(iters[0]), ITER_KEYS - set(iters[0])
    it = iters[0]
    assert 0 <= it["win_rate_ci_low"] <= it["win_rate"] <= it["win_rate_ci_high"] <= 1
    assert it["oracle_queries"] > 0
    d = out / "iter_000"
    for name in ("samples.jsonl", "data.jsonl", "logps.safetensors", "rank_stats.json"):
        assert (d / name).is_file()
    pairs = [json.loads(x) for x in (d / "data.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    # the export loads back with plain transformers, tokenizer included
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    assert tok.chat_template and model.config.vocab_size == len(tok)


def _pairs_file(path, n=12):
    from inpo.data.prompts import default_prompts

    prompts = default_prompts("train", n=n, seed=3)
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "chosen": f"A calm answer about it number {i}.",
                                "rejected": "no no no"}) + "\n")
    return path


def test_offline_jsonl_training_raises_chosen_margin(model_dir, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "off"
    args = ["--model", model_dir, "--output", str(out), "--data", str(data), "--objective", "dpo", "--epochs", "4",
            "--batch-pairs", "4", "--lr", "3e-3", "--impl", "torch", "--progress", "false", "--threads", "1"]
    assert train_main(args) == 0
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 12
    assert steps[-1]["margin"] > steps[0]["margin"] and steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "final" / "config.json").is_file()


def test_offline_records_missing_fields_name_file_and_line(tmp_path):
    from inpo.data.pairs import load_pairs

    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n\n" +
                 json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: record is missing field\(s\) \['rejected'\]"):
        load_pairs(f)
    f.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: invalid JSON"):
        load_pairs(f)
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "missing.jsonl")
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}],
                                "chosen": [{"role": "assistant", "content": "yes"}],
                                "rejected": [{"role": "assistant", "content": "no"}]}) + "\n")
    assert load_pairs(conv) == [{"prompt": [{"role": "user", "content": "hi"}],  # the conversation is kept whole
                                 "chosen": [{"role": "assistant", "content": "yes"}],
                                 "rejected": [{"role": "assistant", "content": "no"}]}]


def test_clear_errors(model_dir, tmp_path, capsys):
    # prompts longer than the budget
    assert train_main(micro_args(model_dir, tmp_path / "a", "--max-tokens", "20")) == 2
    assert "max_tokens=20" in capsys.readouterr().err
    # missing model path
    assert train_main(["--model", str(tmp_path / "nope"), "--output", str(tmp_path / "b"), "--progress", "false"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # corrupt model dir
    bad = tmp_path / "bad_model"
    bad.mkdir()
    (bad / "config.json").write_text("{broken")
    assert train_main(["--model", str(bad), "--tokenizer", model_dir, "--output", str(tmp_path / "c"),
                       "--progress", "false"]) == 2
    assert "could not load the model" in capsys.readouterr().err
    # a tokenizer without a chat template, where one is needed to format prompts
    from inpo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    tok.chat_template = None
    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "tok" / "chat_template.jinja").unlink(missing_ok=True)
    assert train_main(micro_args(model_dir, tmp_path / "e", "--tokenizer", str(tmp_path / "tok"))) == 2
    assert "no chat_template" in capsys.readouterr().err
    # resume with nothing to resume
    assert train_main(micro_args(model_dir, tmp_path / "d", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["sppo", "dpo", "ipo", "onpo"])
def test_every_objective_runs_an_online_iteration(model_dir, tmp_path, objective):
    out = tmp_path / objective
    assert train_main(micro_args(model_dir, out, "--objective", objective, "--evaluate", "false")) == 0
    recs = read_metrics(out)
    steps = [r for r in recs if r["kind"] == "step"]
    assert steps and all(r["loss"] == r["loss"] for r in steps)  # finite, not NaN
    if objective == "onpo":  # two regressions: the auxiliary chain π' first, then the policy
        assert [r["phase"] for r in steps][0] == "aux" and steps[-1]["phase"] == "train"
    if objective == "sppo":  # per-sequence targets instead of pairs
        rows = [json.loads(x) for x in (out / "iter_000" / "data.jsonl").read_text().splitlines()]
        assert len(rows) == 6 * 3 and all(0 <= r["target"] <= 1 for r in rows)
    assert (out / "final" / "config.json").is_file()
