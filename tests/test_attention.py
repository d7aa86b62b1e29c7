"""inpo_varlen: one causal sdpa call per packed document -- the same numbers as transformers' masked sdpa on
packed rows (values and gradients), plain sdpa wherever it is not a packed cache-free row, sdpa for generation."""

import copy

import pytest
import torch

from inpo.ops.attention import VARLEN, body_kwargs, packed_boundaries, register, sdpa_for_generation


def _tiny(attn=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)  # GQA: 2 queries per kv
    model = LlamaForCausalLM(cfg)
    if attn:
        model.set_attn_implementation(register() if attn == VARLEN else attn)
    return model


def _packed(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    return ids, pos


def test_packed_boundaries():
    assert packed_boundaries(torch.tensor([[0, 1, 2, 0, 0, 1]])) == [(0, 3), (3, 4), (4, 6)]
    assert packed_boundaries(torch.tensor([3, 4, 0, 1])) == [(0, 2), (2, 4)]  # a row may start mid-document
    assert packed_boundaries(torch.tensor([], dtype=torch.long)) == []


@pytest.mark.parametrize("precomputed", [True, False])
def test_varlen_matches_masked_sdpa_values_and_grads(precomputed):
    from inpo.train.model import hidden_and_head

    sdpa, varlen = _tiny("sdpa"), _tiny(VARLEN)
    varlen.load_state_dict(sdpa.state_dict())
    ids, pos = _packed([7, 1, 12, 5])

    def run(model):
        model.zero_grad()
        if precomputed:
            hidden, _, _ = hidden_and_head(model, ids, pos)  # boundaries computed once, passed to every layer
        else:
            hidden = model.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state.reshape(-1, 32)
        (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (h_a, g_a), (h_b, g_b) = run(sdpa), run(varlen)
    assert g_a.keys() == g_b.keys() and len(g_a) > 10
    torch.testing.assert_close(h_b, h_a, rtol=1e-5, atol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_varlen_documents_do_not_see_each_other():
    varlen = _tiny(VARLEN).eval()
    ids, pos = _packed([6, 9])
    with torch.no_grad():
        both = varlen.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        alone = varlen.model(input_ids=ids[:, 6:], position_ids=pos[:, 6:], use_cache=False).last_hidden_state
    torch.testing.assert_close(both[:, 6:], alone, rtol=1e-5, atol=1e-5)


def test_padded_batches_and_generation_use_sdpa_semantics():
    sdpa, varlen = _tiny("sdpa").eval(), _tiny(VARLEN).eval()
    varlen.load_state_dict(sdpa.state_dict())
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad(), sdpa_for_generation(varlen):
        assert varlen.config._attn_implementation == "sdpa"
        a = sdpa(input_ids=ids, attention_mask=mask).logits
        b = varlen(input_ids=ids, attention_mask=mask).logits
        out_a = sdpa.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        out_b = varlen.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert varlen.config._attn_implementation == VARLEN  # restored
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], rtol=1e-5, atol=1e-5)
    assert torch.equal(out_a, out_b)


def test_hf_sampler_generates_with_a_varlen_policy():
    from inpo.data.tokenizer import default_tokenizer
    from inpo.generation import make_sampler
    from inpo.train.model import build_default_policy

    tok = default_tokenizer()
    base = build_default_policy(tok).eval()
    varlen = copy.deepcopy(base)
    varlen.set_attn_implementation(register())
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=4)
    prompts = ["tell me about cats", "a poem"]
    a = make_sampler("hf", base, tok, **kw).sample(prompts, 2, seed=3)
    b = make_sampler("hf", varlen, tok, **kw).sample(prompts, 2, seed=3)
    assert a == b and varlen.config._attn_implementation == VARLEN


def test_body_kwargs_only_for_an_uncompiled_varlen_body():
    pos = torch.tensor([[0, 1, 0, 1, 2]])
    assert body_kwargs(_tiny("sdpa"), pos) == {}
    model = _tiny(VARLEN)
    assert body_kwargs(model, pos) == {"inpo_doc_bounds": [(0, 2), (2, 5)]}
    model.base_model._compiled_call_impl = lambda *a, **k: None  # what nn.Module.compile() sets
    assert body_kwargs(model, pos) == {}


def test_without_flash_attn_packed_rows_use_varlen(monkeypatch):
    import inpo._optional as optional
    from inpo.online import _attn_impl
    from inpo.train.config import TrainConfig

    monkeypatch.setattr(optional, "available", lambda name: False)
    assert _attn_impl(TrainConfig(), torch.device("cuda")) == VARLEN
    assert _attn_impl(TrainConfig(), torch.device("cpu")) == VARLEN
    assert _attn_impl(TrainConfig(attn_implementation="eager"), torch.device("cuda")) == "eager"
