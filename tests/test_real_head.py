"""The real tier (`make test-real`): every head impl's per-token and per-sequence log-probs on SmolLM2-135M-Instruct
and real chat text equal HF's ``log_softmax(model(...).logits)``, within that dtype's rounding.

The rule (CCE's, tests/helpers.py): ``max|ours - fp64| <= 2 * max|HF - fp64| + 2^-20 * max|fp64|``, where HF is
the model's own logits in the dtype under test and fp64 is the same hidden states and head weight in fp64. Per
token through the public ``sequence_logps`` with one "sequence" per token (``cu_seqlens = 0, 1, ..., N``); per
sequence over the response tokens of each packed conversation. bf16 Triton is GPU-only (the interpreter's bf16
``tl.dot`` is wrong), so the interpreter runs it in fp32 only, on a slice of the tokens (it is slow at V = 49152).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close_to_reference

pytestmark = pytest.mark.real

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a Python function that reverses a string."},
     {"role": "assistant", "content": "def reverse(s):\n    return s[::-1]"}],
    [{"role": "user", "content": "Name three primary colours."},
     {"role": "assistant", "content": "Red, yellow and blue (or red, green and blue for light)."},
     {"role": "user", "content": "Which one is warmest?"},
     {"role": "assistant", "content": "Red is usually called the warmest."}],
]
IMPLS = ["native", "torch", "naive", "triton"]


def _packed(tok):
    """Documents packed into one row: ids, per-document position ids, labels (next token; -100 at each end) and
    a response mask (the last assistant turn)."""
    ids, pos, labels, response, cu = [], [], [], [], [0]
    for chat in CHATS:
        full = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        prompt = tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        assert full[:len(prompt)] == prompt
        ids += full
        pos += list(range(len(full)))
        labels += full[1:] + [-100]
        response += [i >= len(prompt) - 1 for i in range(len(full) - 1)] + [False]
        cu.append(len(ids))
    as_t = torch.tensor
    return as_t([ids]), as_t([pos]), as_t(labels), as_t(response), as_t(cu, dtype=torch.int32)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def case(request, smollm2_dir):
    """Hidden states, head weight, HF's own log-probs in the dtype, and the fp64 reference of the same math."""
    from transformers import AutoModelForCausalLM

    from inpo.data.tokenizer import load_tokenizer
    from inpo.train.model import hidden_and_head

    dtype = getattr(torch, request.param)
    folder = smollm2_dir if dtype == torch.float32 else smollm2_dir.parent / "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype).eval()
    ids, pos, labels, response, cu = _packed(load_tokenizer(smollm2_dir))
    with torch.no_grad():
        hidden, weight, _ = hidden_and_head(model, ids, pos)
        hf = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):  # each document alone, as a user would run it
            hf.append(torch.log_softmax(model(ids[:, a:b]).logits[0], dim=-1))
        hf = torch.cat(hf)
    ok = labels >= 0
    pick = lambda lp: torch.where(ok, lp.gather(1, labels.clamp(min=0)[:, None])[:, 0].double(), 0.0)  # noqa: E731
    ref64 = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)
    return dict(dtype=dtype, hidden=hidden, weight=weight, labels=labels, response=response, cu=cu,
                hf_tok=pick(hf), ref_tok=pick(ref64))


def _seq_sums(tok_logps, response, cu):
    return torch.stack([tok_logps[a:b][response[a:b]].double().sum() for a, b in zip(cu[:-1], cu[1:])])


@pytest.mark.parametrize("impl", IMPLS)
def test_token_and_sequence_logps_equal_hf(case, impl):
    from inpo.ops import sequence_logps

    if impl == "triton" and case["dtype"] == torch.bfloat16:
        pytest.skip("bf16 Triton is GPU-only: the interpreter computes bf16 tl.dot wrongly")
    n = case["labels"].numel() if impl != "triton" else 48  # the interpreter is slow at V = 49152
    hidden, labels = case["hidden"][:n], case["labels"][:n]
    per_token = sequence_logps(hidden, case["weight"], labels, torch.arange(n + 1, dtype=torch.int32), impl=impl)
    assert_close_to_reference(per_token, case["hf_tok"][:n], case["ref_tok"][:n], name=f"{impl} per-token")
    if impl == "triton":
        return
    masked = torch.where(case["response"], labels, -100)
    per_seq = sequence_logps(hidden, case["weight"], masked, case["cu"], impl=impl)
    want, hf = (_seq_sums(case[k], case["response"], case["cu"]) for k in ("ref_tok", "hf_tok"))
    assert_close_to_reference(per_seq, hf, want, name=f"{impl} per-sequence")
    assert (want < -1).all()  # real responses, not trivially certain
