"""End to end on a user's own model and data (issue 13, items 1-4): offline DPO on conversational TRL pairs with
a tiny Qwen2 (ChatML), online INPO with a Qwen2 reward model as the oracle on a Llama-3-style policy, then
`inpo eval` on the export without --baseline. Every model is built locally (tests/hf_fixtures.py)."""

import json

import pytest
import torch

from inpo.train.cli import main as train_main
from tests.hf_fixtures import (llama3_dir, qwen2_dir, qwen2_pairwise_dir, qwen2_reward_dir,  # noqa: F401 (fixtures)
                               write_jsonl)

SYSTEM = {"role": "system", "content": "Answer briefly."}
COMMON = ["--impl", "torch", "--progress", "false", "--threads", "1", "--n-bootstrap", "50"]


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _pairs(n):
    rows = []
    for i in range(n):
        user = {"role": "user", "content": f"Describe the ocean number {i}."}
        rows.append({"prompt": [SYSTEM, user] if i % 2 else [user],
                     "chosen": [{"role": "assistant", "content": "The ocean is calm and blue."}],
                     "rejected": [{"role": "assistant", "content": "Rock."}]})
    rows.append({"chosen": "The sky is blue today.", "rejected": "The sky is green today."})  # implicit, standard
    return rows


def test_offline_dpo_on_conversational_pairs(qwen2_dir, tmp_path, capsys):
    """The precomputed π_ref log-probs are exactly the log-probs of encode_pair's tokens (the template's
    rendering, <|im_end|>\\n included) under the user's model; TRL defaults are printed; the export loads."""
    from transformers import AutoModelForCausalLM

    from inpo.data.chat import encode_pair
    from inpo.data.pairs import load_pairs
    from inpo.data.tokenizer import load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs(5))
    out = tmp_path / "run"
    rc = train_main(["--model", str(qwen2_dir), "--data", str(data), "--output", str(out), "--objective", "dpo",
                     "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--max_length", "64", *COMMON])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "defaults for a user model" in printed and "beta=0.1" in printed and "lr=1e-06" in printed
    tok = load_tokenizer(qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(str(qwen2_dir)).eval()
    want = []
    for rec in load_pairs(data):
        p, c, r = encode_pair(tok, rec)
        for y in (c, r):
            ids = torch.tensor([p + y])
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1:-1].float()
            want.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(y)[:, None]).sum().item())
    from safetensors.torch import load_file

    got = load_file(str(out / "iter_000" / "logps.safetensors"))["ref"]
    torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=2e-4)
    it = [r for r in _metrics(out) if r["kind"] == "iteration"][0]
    assert it["pairs"] == 6
    origin = json.loads((out / "final" / "inpo_origin.json").read_text())
    assert origin["base_model"] == str(qwen2_dir.resolve()) and origin["chat_template"] == "auto"
    AutoModelForCausalLM.from_pretrained(str(out / "final"))


def test_online_inpo_with_a_reward_model_then_eval_follows_the_run(llama3_dir, qwen2_reward_dir, tmp_path, capsys):
    from inpo.data.chat import prompt_key
    from inpo.data.prompts import load_prompts, split_prompts
    from inpo.eval import main as eval_main

    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": [SYSTEM, {"role": "user", "content": f"Describe topic {i}."}]} if i % 3 == 0
                           else {"prompt": f"Tell me about item {i}."} for i in range(10)])
    out = tmp_path / "run"
    k, n_train = 3, 8
    rc = train_main(["--model", str(llama3_dir), "--prompts", str(prompts), "--oracle", f"reward:{qwen2_reward_dir}",
                     "--output", str(out), "--iterations", "1", "--k", str(k), "--max-new-tokens", "5",
                     "--eval-k", "1", "--batch-pairs", "4", "--epochs", "1", *COMMON])
    assert rc == 0
    assert "eta=0.0075" in capsys.readouterr().out
    it = [r for r in _metrics(out) if r["kind"] == "iteration"][0]
    # the reward model scores K responses per prompt: K queries each (it used to report 0)
    assert it["oracle_queries"] == n_train * k
    # evaluation: the user's held-out prompts (disjoint from training), the user's model as the baseline
    pool = load_prompts(prompts)
    held = split_prompts(pool, "eval")
    sampled = [json.loads(x)["prompt"] for x in (out / "iter_000" / "samples.jsonl").read_text().splitlines()]
    evaluated = [json.loads(x)["prompt"] for x in (out / "iter_000" / "eval_responses.jsonl").read_text().splitlines()]
    assert [prompt_key(p) for p in evaluated] == [prompt_key(p) for p in held]
    assert {prompt_key(p) for p in sampled}.isdisjoint(prompt_key(p) for p in held) and len(sampled) == n_train
    assert it["eval_queries"] == 2 * len(held)  # each compared pair costs two reward-model scores
    # inpo eval without --baseline: the recorded starting model and held-out prompts, no default SFT
    res = tmp_path / "eval.json"
    assert eval_main(["--policy", str(out / "final"), "--oracle", f"reward:{qwen2_reward_dir}", "--max-new-tokens", "5",
                      "--n-bootstrap", "50", "--json", str(res)]) == 0
    printed = capsys.readouterr().out
    assert "building the default policy" not in printed
    rec = json.loads(res.read_text())
    assert rec["baseline"] == str(llama3_dir.resolve()) and rec["prompts_n"] == len(held)
    assert rec["queries"] == 2 * len(held)
    # a bare model folder has no record: a clear error, nothing trained
    assert eval_main(["--policy", str(llama3_dir), "--max-new-tokens", "2"]) == 2
    assert "--baseline" in capsys.readouterr().err


def test_plain_text_base_model_needs_the_flag(qwen2_dir, tmp_path, capsys):
    """A tokenizer without a chat template: refused with a clear message unless --no-chat-template, before the
    output directory is touched; with the flag, an offline run on standard pairs trains (prompt + response + eos)."""
    import shutil

    model = tmp_path / "base"
    shutil.copytree(qwen2_dir, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "The sky is", "chosen": " blue.", "rejected": " red."}] * 4)
    out = tmp_path / "run"
    args = ["--model", str(model), "--data", str(data), "--output", str(out), "--objective", "ipo", "--epochs", "1",
            "--batch-pairs", "2", *COMMON]
    assert train_main(args) == 2
    assert "chat_template: none" in capsys.readouterr().err and not out.exists()
    assert train_main(args + ["--no-chat-template"]) == 0
    assert json.loads((out / "final" / "inpo_origin.json").read_text())["chat_template"] == "none"


def test_online_inpo_with_a_pairwise_model_and_prompt_truncation(qwen2_dir, qwen2_pairwise_dir, tmp_path):
    """Conversational prompts, a pairwise preference model's tournament, max_prompt_length applied to generation
    and training alike (the prompt keeps its last tokens)."""
    from inpo.data.chat import encode_completion, encode_prompt
    from inpo.data.tokenizer import load_tokenizer

    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": [SYSTEM, {"role": "user", "content": f"Describe topic {i}."}]} for i in range(6)])
    out = tmp_path / "run"
    k, mpl = 3, 12
    rc = train_main(["--model", str(qwen2_dir), "--prompts", str(prompts), "--oracle", f"pairwise:{qwen2_pairwise_dir}",
                     "--output", str(out), "--iterations", "1", "--k", str(k), "--max-new-tokens", "4",
                     "--max-prompt-length", str(mpl), "--evaluate", "false", "--batch-pairs", "4", "--epochs", "1",
                     *COMMON])
    assert rc == 0
    it = [r for r in _metrics(out) if r["kind"] == "iteration"][0]
    stats = json.loads((out / "iter_000" / "rank_stats.json").read_text())
    n = 5  # 6 prompts, one held out
    # the tournament: K-1 for the winner, ceil(K/2)-1 for the loser, one labelling query unless identical
    assert it["oracle_queries"] == n * (k - 1 + (k + 1) // 2 - 1) + n - stats["identical"]
    tok = load_tokenizer(qwen2_dir)
    data = [json.loads(x) for x in (out / "iter_000" / "data.jsonl").read_text().splitlines()]
    from inpo.online import training_sequences as _sequences
    from inpo.train.config import load_config

    cfg = load_config(None, {"model": str(qwen2_dir), "max_prompt_length": mpl})
    seqs, kept = _sequences(tok, data, True, cfg)
    assert kept == data and len(seqs) == 2 * len(data) > 0
    full_prompt = encode_prompt(tok, data[0]["prompt"])
    assert len(full_prompt) > mpl and seqs[0][0] == full_prompt[-mpl:]
    assert seqs[0][1] == encode_completion(tok, data[0]["prompt"], data[0]["chosen"])[1]
