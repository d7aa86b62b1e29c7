"""Models whose logits are transformed after the LM head (issue 21): every family inpo supports, built tiny from
its config, gives the log-probs transformers gives -- per token and per sequence, on every CPU impl -- and trains
with the gradients autograd takes through the model's own logits; a head inpo cannot reproduce is refused, by
attribute or by the load-time probe.

The tiny models' LM-head weights are drawn with std 1 (raw logits of std ~8), so each transform matters by O(1) in
every log-prob: each family's test also checks that the head *without* the transform is off by far more than its
tolerance (the mutation "transform not detected")."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from inpo.data.packing import pack_sequences
from inpo.objectives import DPO
from inpo.ops import preference_loss, sequence_logps
from inpo.ops.transform import IDENTITY, LogitTransform
from inpo.train import lm_head
from inpo.train.lm_head import logit_transform_of
from inpo.train.model import check_head_matches_model, check_packing_isolates_documents, hidden_and_head
from tests.test_head import CPU_IMPLS

_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, vocab_size=512, max_position_embeddings=128)
_GEMMA3N = dict(vocab_size_per_layer_input=512, hidden_size_per_layer_input=16, num_kv_shared_layers=0, laurel_rank=8,
                layer_types=["sliding_attention", "full_attention"], altup_num_inputs=2,
                activation_sparsity_pattern=[0.0, 0.0])
_GRANITE = (dict(logits_scaling=4.0), LogitTransform(logit_scale=0.25))
_COHERE = (dict(logit_scale=0.25), LogitTransform(logit_scale=0.25))
_GEMMA_CAP = (dict(final_logit_softcapping=3.0), LogitTransform(softcap=3.0))

# model_type: (config overrides, the transform transformers applies with them)
FAMILIES = {
    "gemma2": _GEMMA_CAP, "gemma3_text": _GEMMA_CAP, "vaultgemma": _GEMMA_CAP, "nanochat": _GEMMA_CAP,
    "beam": _GEMMA_CAP,
    "gemma3n_text": ({**_GEMMA_CAP[0], **_GEMMA3N}, _GEMMA_CAP[1]),
    "gemma4_text": ({**_GEMMA_CAP[0], "vocab_size_per_layer_input": 512, "hidden_size_per_layer_input": 16},
                    _GEMMA_CAP[1]),
    "recurrent_gemma": (dict(logits_soft_cap=3.0), LogitTransform(softcap=3.0)),
    "xlstm": (dict(output_logit_soft_cap=3.0), LogitTransform(softcap=3.0)),
    "cohere": _COHERE, "cohere2": _COHERE, "cohere2_moe": _COHERE,
    "hyperclovax": (dict(logits_scaling=0.5), LogitTransform(logit_scale=0.5)),
    "falcon_h1": (dict(lm_head_multiplier=0.5), LogitTransform(logit_scale=0.5)),
    "granite": _GRANITE, "granite_swa": _GRANITE, "granitemoe": _GRANITE, "granitemoe_swa": _GRANITE,
    "granitemoehybrid": _GRANITE, "granitemoeshared": _GRANITE,
    "minicpm3": (dict(num_key_value_heads=4, dim_model_base=16), LogitTransform(logit_scale=0.25)),  # 64/16
}
# Families whose body is recurrent (or hybrid): packed documents would share state, so their end-to-end tests
# feed one document per row; the head tests do not pack.
ATTENTION_ONLY = ("gemma2", "gemma3_text", "cohere", "granite", "hyperclovax", "minicpm3")


@functools.lru_cache(maxsize=None)
def tiny(model_type: str, seed: int = 0):
    """A tiny random ``model_type`` model (eval mode, fp32) whose LM-head weight has std 1."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**_BASE, **FAMILIES[model_type][0]})
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def _hf_token_logps(model, ids, labels):
    """log_softmax(model(ids).logits) at each label (fp32 logits, fp64 softmax), 0 where ignored."""
    with torch.no_grad():
        logits = model(input_ids=ids[None], position_ids=torch.arange(len(ids))[None], use_cache=False).logits[0]
    lp = torch.log_softmax(logits.double(), -1).gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(labels != -100, lp, 0.0)


def _truth(head, labels, transform):
    """fp64 token log-probs of the head inputs under ``transform`` (the ground truth both sides approximate)."""
    raw = head.hidden.double() @ head.weight.double().t() + (0 if head.bias is None else head.bias.double())
    lp = torch.log_softmax(transform.apply(raw), -1).gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(labels != -100, lp, 0.0)


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _sequence(n=14, prompt=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (n,), generator=g)
    labels = torch.cat([ids[1:], torch.tensor([7])])
    labels[:prompt - 1] = -100  # prompt tokens carry no log-prob
    return ids, labels


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_detected_transform_and_hf_log_probs(model_type):
    """The transform read from the model is the one its forward applies: HF's log-probs equal the fp64 head
    with it to within 4x the error of the same head in fp32, and are O(1) away from the head without it."""
    model = tiny(model_type)
    expected = FAMILIES[model_type][1]
    assert logit_transform_of(model) == expected
    ids, labels = _sequence()
    head = hidden_and_head(model, ids[None], torch.arange(len(ids))[None])
    assert (head.softcap, head.logit_scale) == (expected.softcap, expected.logit_scale)
    hf, truth = _hf_token_logps(model, ids, labels), _truth(head, labels, expected)
    fp32 = sequence_logps(head.hidden, head.weight, labels, torch.arange(len(ids) + 1, dtype=torch.int32),
                          impl="naive", **head.kwargs())
    tol = 4 * _err(fp32, truth) + 2.0**-20 * truth.abs().max().item()
    assert _err(hf, truth) <= tol, (model_type, _err(hf, truth), tol)
    assert _err(hf, _truth(head, labels, IDENTITY)) > 100 * tol  # the mutation: transform not detected
    assert check_head_matches_model(model) <= 1e-4  # the load-time probe accepts it


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_head_matches_hf_per_token_and_per_sequence(model_type, impl):
    """sequence_logps with the model's head inputs vs HF's log-probs: per token (one sequence per token) and per
    sequence (prompt ignored), within HF's own error plus twice the fp32 naive head's (+ 2^-20 of the scale)."""
    model = tiny(model_type)
    ids, labels = _sequence()
    head = hidden_and_head(model, ids[None], torch.arange(len(ids))[None])
    hf = _hf_token_logps(model, ids, labels)
    expected = FAMILIES[model_type][1]  # the reference side never reads the head inputs' transform
    truth = _truth(head, labels, expected)
    per_token = torch.arange(len(ids) + 1, dtype=torch.int32)
    naive32 = sequence_logps(head.hidden, head.weight, labels, per_token, impl="naive", softcap=expected.softcap,
                             logit_scale=expected.logit_scale)
    tol = _err(hf, truth) + 2 * _err(naive32, truth) + 2.0**-20 * truth.abs().max().item()
    got = sequence_logps(head.hidden, head.weight, labels, per_token, impl=impl, **head.kwargs())
    assert _err(got, hf) <= tol, (_err(got, hf), tol)
    whole = sequence_logps(head.hidden, head.weight, labels, torch.tensor([0, len(ids)], dtype=torch.int32),
                           impl=impl, **head.kwargs())
    assert _err(whole, hf.sum()) <= len(ids) * tol


def _pairs(n_pairs=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2 * n_pairs):
        prompt = torch.randint(0, 500, (5,), generator=g).tolist()
        out.append((prompt, torch.randint(0, 500, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()))
    return out


def _hf_dpo_loss(model, seqs, ref, objective):
    """The DPO loss from the model's own logits, one unpacked document per forward (autograd through the model)."""
    logps = []
    for prompt, resp in seqs:
        ids = torch.tensor(prompt + resp)
        logits = model(input_ids=ids[None], use_cache=False).logits[0, len(prompt) - 1:-1]
        logps.append(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(resp)[:, None]).sum())
    return objective(torch.stack(logps), ref, None, None)


@pytest.mark.parametrize("model_type", ATTENTION_ONLY)
def test_training_gradients_match_autograd_through_hf_logits(model_type):
    """End to end: the fused DPO loss on a packed batch and every parameter's gradient equal those autograd takes
    through ``model(ids).logits`` (fp32; a missing chain of the transform's derivative would fail on the head
    weight and every body parameter)."""
    model = tiny(model_type, seed=2)
    seqs, objective = _pairs(), DPO(beta=0.5)
    ref = torch.tensor([-40.0, -38.0, -41.0, -39.5])
    (batch,) = pack_sequences(seqs, max_tokens=10_000, pairwise=True)
    head = hidden_and_head(model, batch.input_ids, batch.position_ids)
    loss = preference_loss(head.hidden, head.weight, batch.labels, batch.cu_seqlens, objective, ref_logps=ref,
                           impl="torch", **head.kwargs())
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    want = _hf_dpo_loss(model, seqs, ref, objective)
    want.backward()
    assert abs(loss.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))
    assert ours.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            scale = p.grad.abs().max().item()
            assert _err(ours[n], p.grad) <= 1e-4 * scale + 1e-7, (n, _err(ours[n], p.grad), scale)
    model.zero_grad(set_to_none=True)


def test_train_step_loss_is_the_hf_loss():
    """One optimiser step through the trainer's own step on a Gemma-2: its reported loss is the loss from the
    model's logits before the step."""
    from inpo.train.step import train_step

    model = tiny("gemma2", seed=4)
    seqs, objective = _pairs(seed=5), DPO(beta=0.5)
    ref = torch.tensor([-40.0, -38.0, -41.0, -39.5])
    with torch.no_grad():
        want = _hf_dpo_loss(model, seqs, ref, objective).item()
    (batch,) = pack_sequences(seqs, max_tokens=10_000, pairwise=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = train_step(model, [batch], objective, opt, sched, {"ref_logps": ref, "anchor_logps": None,
                                                               "targets": None}, impl="torch")
    model.eval()
    assert abs(stats["loss"] - want) <= 1e-5 * max(1.0, abs(want))


# ---- refusals -----------------------------------------------------------------------------------------------
def _llama(**config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**_BASE, **config})).eval()


@pytest.mark.parametrize("attr, value", [("logits_mup_width_multiplier", 2.0), ("logit_scale", 0.5),
                                         ("final_logit_softcapping", 30.0), ("unpadded_vocab_size", 500),
                                         ("logits_scaling", "inv_sqrt_d_model")])
def test_unknown_class_with_a_transform_attribute_is_refused(attr, value):
    model = _llama(**{attr: value})
    with pytest.raises(ValueError, match=f"LlamaForCausalLM: config.{attr}={value!r}"):
        logit_transform_of(model)
    with pytest.raises(ValueError, match=f"config.{attr}"):
        hidden_and_head(model, torch.tensor([[1, 2, 3]]), torch.tensor([[0, 1, 2]]))
    assert logit_transform_of(_llama(logit_scale=1.0, final_logit_softcapping=None)) is IDENTITY  # neutral values


def test_text_config_attribute_is_refused():
    class Config:
        final_logit_softcapping = None

        def get_text_config(self):
            return TextConfig()

    class TextConfig:
        final_logit_softcapping = 30.0

    class SomeForConditionalGeneration(nn.Module):
        config = Config()

    with pytest.raises(ValueError, match="SomeForConditionalGeneration: config.text_config.final_logit_softcapping=30.0"):
        logit_transform_of(SomeForConditionalGeneration())


@pytest.mark.parametrize("value", [-3.0, 0.0, float("nan"), float("inf")])
def test_unusable_attribute_values_are_refused(value):
    model = tiny("gemma2", seed=9)
    old = model.config.final_logit_softcapping
    model.config.final_logit_softcapping = value
    try:
        with pytest.raises(ValueError, match=r"Gemma2ForCausalLM: config.final_logit_softcapping=.* is not a finite"):
            logit_transform_of(model)
    finally:
        model.config.final_logit_softcapping = old


def test_subclasses_and_fsdp_wrappers_keep_their_head():
    """FSDP2 swaps a module's class for a subclass named FSDP<name>; a user's subclass inherits its parent's head."""
    model = tiny("cohere", seed=0)
    fsdp_like = type("FSDPCohereForCausalLM", (type(model),), {})
    assert lm_head._recipe_of(object.__new__(fsdp_like))[0] == "CohereForCausalLM"


def test_hidden_divisor_with_a_bias_is_refused():
    model = tiny("minicpm3", seed=3)
    head = model.get_output_embeddings()
    head.bias = nn.Parameter(torch.zeros(head.weight.shape[0]))
    try:
        with pytest.raises(ValueError, match="MiniCPM3ForCausalLM: config.logits_scaling=4.0 divides the hidden"):
            logit_transform_of(model)
    finally:
        head.bias = None


def test_probe_catches_a_transform_no_attribute_names(monkeypatch):
    """The load-time probe is the net under the table: a Gemma-2 with its table entry and attribute scan removed
    (as an unknown family with an unknown transform would be) is refused by comparing with its own logits."""
    model = tiny("gemma2")
    monkeypatch.delitem(lm_head._RECIPES, "Gemma2ForCausalLM")
    monkeypatch.delitem(lm_head.TRANSFORM_ATTRIBUTES, "final_logit_softcapping")
    assert logit_transform_of(model) is IDENTITY
    with pytest.raises(ValueError, match="Gemma2ForCausalLM: the fused head's log-probs differ from the model's own"):
        check_head_matches_model(model)


def test_probe_catches_a_head_that_is_not_lm_head_of_the_body():
    from transformers import LlamaForCausalLM

    class DoubledLogits(LlamaForCausalLM):  # e.g. a custom head: nothing in the config says so
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    from transformers import LlamaConfig

    torch.manual_seed(0)
    model = DoubledLogits(LlamaConfig(**_BASE)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_()
    with pytest.raises(ValueError, match="DoubledLogits: the fused head's log-probs differ"):
        check_head_matches_model(model)
    check_head_matches_model(_llama())  # a plain Llama passes


@pytest.mark.parametrize("model_type", ["xlstm", "recurrent_gemma", "falcon_h1", "granitemoehybrid"])
def test_bodies_that_mix_packed_documents_are_refused(model_type):
    """Recurrent / state-space bodies carry state from one packed document into the next (0.02-3 here): their
    heads are right, but training on packed rows would not be, so loading refuses them."""
    with pytest.raises(ValueError, match="a document packed after another gives other hidden states"):
        check_packing_isolates_documents(tiny(model_type))


@pytest.mark.parametrize("model_type", ["gemma2", "cohere", "granite", "minicpm3"])
def test_attention_bodies_keep_packed_documents_apart(model_type):
    assert check_packing_isolates_documents(tiny(model_type)) <= 1e-5


# ---- the user's path: `inpo train --model DIR` -----------------------------------------------------------------
def _save_tiny(path, model_type, tok, **config):
    """A tiny ``model_type`` model sized to the tokenizer (head weight std 1), saved with it like a checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.hf_fixtures import _save

    cfg = AutoConfig.for_model(model_type, **{**_BASE, **FAMILIES.get(model_type, ({}, None))[0], **config,
                                              "vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
                                              "pad_token_id": tok.pad_token_id, "bos_token_id": None})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(generator=torch.Generator().manual_seed(0))
    return _save(model, tok, path)


def test_inpo_train_on_a_gemma2_uses_its_softcapped_log_probs(tmp_path):
    """Offline DPO on a tiny Gemma-2 checkpoint (the issue's case, −404 vs −217 before): the precomputed π_ref
    log-probs are HF's ``log_softmax(model(ids).logits)`` of each response, and training runs."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from inpo.data.chat import encode_pair
    from inpo.data.pairs import load_pairs
    from inpo.online.cli import main as train_main
    from tests.hf_fixtures import chatml_tokenizer, write_jsonl

    tok = chatml_tokenizer()
    model_dir = _save_tiny(tmp_path / "gemma2", "gemma2", tok)
    rows = [{"prompt": [{"role": "user", "content": f"Describe the ocean number {i}."}],
             "chosen": [{"role": "assistant", "content": "The ocean is calm and blue."}],
             "rejected": [{"role": "assistant", "content": "Rock."}]} for i in range(3)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    rc = train_main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--objective", "dpo",
                     "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--max_length", "64",
                     "--impl", "torch", "--progress", "false", "--threads", "1"])
    assert rc == 0
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    want, uncapped = [], []
    for rec in load_pairs(data):
        p, c, r = encode_pair(tok, rec)
        for y in (c, r):
            ids = torch.tensor([p + y])
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1:-1].double()
                hidden = model.model(ids).last_hidden_state[0, len(p) - 1:-1].double()
            pick = lambda z: torch.log_softmax(z, -1).gather(1, torch.tensor(y)[:, None]).sum().item()  # noqa: E731
            want.append(pick(logits))
            uncapped.append(pick(hidden @ model.lm_head.weight.double().t()))  # what every impl returned before
    got = load_file(str(out / "iter_000" / "logps.safetensors"))["ref"].double()
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=2e-4)
    assert (got - torch.tensor(uncapped, dtype=torch.float64)).abs().min() > 1.0  # the cap matters here


def test_inpo_train_refuses_a_head_it_cannot_reproduce(tmp_path, capsys):
    """A checkpoint whose config carries a logit transform of an unverified family: exit 2 with one line naming
    the attribute, before the output directory exists."""
    from inpo.online.cli import main as train_main
    from tests.hf_fixtures import chatml_tokenizer, write_jsonl

    tok = chatml_tokenizer()
    model_dir = _save_tiny(tmp_path / "llama", "llama", tok, logits_mup_width_multiplier=4.0)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi.", "chosen": "Hello.", "rejected": "No."}] * 2)
    out = tmp_path / "run"
    rc = train_main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--objective", "dpo",
                     "--impl", "torch", "--progress", "false", "--threads", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "LlamaForCausalLM: config.logits_mup_width_multiplier=4.0" in err and "Traceback" not in err
    assert not out.exists()


def test_probes_leave_nan_weights_to_the_nan_guards():
    """A model with NaN weights has no logits to compare: the probes return NaN instead of blaming the head, so
    the loaders' NaN checks name the weight (tests/test_faults.py)."""
    model = _llama()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    assert check_head_matches_model(model) != check_head_matches_model(model)  # NaN
    assert check_packing_isolates_documents(model) != check_packing_isolates_documents(model)
