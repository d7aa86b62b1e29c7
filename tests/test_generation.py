"""HF sampler: reproducible for a seed, K per prompt, bounded length, stops at eos, left padding."""

import copy
import os

import pytest
import torch

from inpo.data.prompts import default_prompts
from inpo.data.tokenizer import default_tokenizer
from inpo.generation import HFSampler, Sampler, make_sampler

PROMPTS = default_prompts("eval", n=3, seed=0) + ["Hi"]  # unequal lengths: exercises left padding


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return default_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_k_per_prompt_and_reproducible(model, tok):
    s = HFSampler(model, tok, max_new_tokens=6, batch_size=5)
    a = s.sample(PROMPTS, 3, seed=1)
    assert len(a) == len(PROMPTS) and all(len(g) == 3 and all(isinstance(y, str) for y in g) for g in a)
    assert s.sample(PROMPTS, 3, seed=1) == a
    assert s.sample(PROMPTS, 3, seed=2) != a
    assert len({y for g in a for y in g}) > 6  # actually sampling, not greedy copies


def test_caller_rng_and_model_mode_are_untouched(model, tok):
    model.train()
    state = torch.random.get_rng_state()
    HFSampler(model, tok, max_new_tokens=3).sample(PROMPTS[:2], 2, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training
    model.eval()


def test_respects_max_new_tokens(model, tok):
    s = HFSampler(model, tok, max_new_tokens=4, batch_size=64)
    s.sample(PROMPTS, 4, seed=0)
    assert len(s.last_lengths) == 16 and max(s.last_lengths) <= 4
    assert s.last_stats["new_tokens"] == sum(s.last_lengths)


def test_stops_at_eos_and_strips_the_prompt(model, tok):
    calls = []

    def force_eos_from_step_4(module, inputs, output):
        calls.append(1)
        if len(calls) >= 4:  # call 1 is the prefill: steps 1–3 sample freely, step 4 emits eos
            output = output.clone()
            output[..., tok.eos_token_id] = 1e4
            return output

    handle = model.lm_head.register_forward_hook(force_eos_from_step_4)
    try:
        s = HFSampler(model, tok, max_new_tokens=20, batch_size=64)
        out = s.sample(PROMPTS, 2, seed=0)
    finally:
        handle.remove()
    assert len(calls) == 4  # generation stopped once every row had ended, not at max_new_tokens
    assert s.last_lengths == [3] * 8 and s.last_stats["finished"] == 8
    for prompt, group in zip(PROMPTS, out):
        for y in group:
            assert prompt not in y and "<|" not in y
            assert tok.encode(y, add_special_tokens=False) != []


def test_left_padding_matches_unbatched_greedy(model, tok):
    s = HFSampler(model, tok, max_new_tokens=6, temperature=0.0, batch_size=64)
    batched = s.sample(PROMPTS, 1)
    alone = [s.sample([p], 1)[0] for p in PROMPTS]
    assert batched == alone


def test_make_sampler_and_errors(model, tok):
    assert isinstance(make_sampler("hf", model, tok), HFSampler)
    assert isinstance(make_sampler("auto", model, tok), Sampler)  # no vLLM/CUDA here: HF
    with pytest.raises(ValueError, match="unknown sampler backend"):
        make_sampler("sglang", model, tok)
    with pytest.raises(ValueError, match="k .* positive int"):
        HFSampler(model, tok).sample(PROMPTS, 0)
    with pytest.raises(TypeError, match="list of str"):
        HFSampler(model, tok).sample("one prompt", 2)
    with pytest.raises(ValueError, match="temperature"):
        HFSampler(model, tok, temperature=-1)
    with pytest.raises(ValueError, match="batch_size"):
        HFSampler(model, tok, batch_size=0)


def test_vllm_backend_without_vllm_says_what_to_install(model, tok):
    from inpo._optional import available

    if available("vllm"):
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match="vllm"):
        make_sampler("vllm", "/nonexistent", tok)


def test_vllm_sampler_exports_the_current_weights_of_an_in_memory_model(model, tok, tmp_path, monkeypatch):
    """Given a model object, vLLM must load *its* weights, not the directory in config._name_or_path (π_ref's)."""
    import types

    import inpo._optional
    from safetensors.torch import load_file

    seen = {}

    class FakeLLM:
        def __init__(self, model, tokenizer, **kw):
            seen["path"] = model
            seen["weights"] = load_file(os.path.join(model, "model.safetensors"))
            seen["tok"] = os.path.isfile(os.path.join(tokenizer, "tokenizer.json"))

    fake = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=dict)
    monkeypatch.setattr(inpo._optional, "require", lambda name: fake)
    stale = tmp_path / "ref"
    stale.mkdir()
    monkeypatch.setattr(model.config, "_name_or_path", str(stale))
    from inpo.generation.vllm import VLLMSampler

    s = VLLMSampler(model, tok)
    assert seen["path"] != str(stale) and seen["tok"]
    torch.testing.assert_close(seen["weights"]["model.norm.weight"], model.model.norm.weight.detach())
    with pytest.raises(ValueError, match="tokenizer"):
        VLLMSampler(model, None)
    del s


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_flash_attention_fp32_model_samples_under_bf16_autocast_on_cuda(model, monkeypatch):
    """flash-attn rejects fp32: an fp32 flash_attention_2 model must generate under bf16 autocast on CUDA."""
    from inpo.generation.hf import _flash_autocast

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert not isinstance(_flash_autocast(model, cuda), torch.autocast)  # sdpa: unchanged
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    ctx = _flash_autocast(model, cuda)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    assert not isinstance(_flash_autocast(model, cpu), torch.autocast)


def test_row_seeds_are_distinct_per_prompt_sample_and_call():
    """Every (call seed, prompt, sample) gets its own vLLM seed: no two rows of a call, nor of consecutive
    iterations' calls, share one (vLLM seeds sample j of a request ``seed + j``, so near seeds would collide)."""
    from inpo.generation.base import row_seed

    seeds = {row_seed(s, i, j) for s in range(3) for i in range(200) for j in range(8)}
    assert len(seeds) == 3 * 200 * 8
    assert all(0 <= x < 2 ** 63 for x in seeds)
    assert row_seed(7, 3, 2) == row_seed(7, 3, 2)
    near = sorted(seeds)
    assert min(b - a for a, b in zip(near, near[1:])) > 8  # seed + j of one row never lands on another row


def test_vllm_dtype_is_the_policys_unless_configured(model):
    from inpo.generation.vllm import resolve_dtype

    assert resolve_dtype(model, None) == resolve_dtype(model, "policy") == "float32"
    assert resolve_dtype(copy.deepcopy(model).to(torch.bfloat16), "policy") == "bfloat16"
    assert resolve_dtype("/some/dir", None) == "float32"  # the trainer loads directories in fp32
    assert resolve_dtype(model, "bfloat16") == "bfloat16" and resolve_dtype(model, torch.float16) == "float16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(model, "auto")


def test_config_rejects_unknown_sampler_and_dtype():
    from inpo.train.config import TrainConfig

    with pytest.raises(ValueError, match="sampler must be one of.*'sglang'"):
        TrainConfig(sampler="sglang").validate()
    with pytest.raises(ValueError, match="sampler_dtype must be one of.*'fp8'"):
        TrainConfig(sampler_dtype="fp8").validate()
    TrainConfig(sampler="auto", sampler_dtype="bfloat16").validate()


def test_set_policy_and_close_on_the_hf_sampler(model, tok):
    """The run keeps one sampler and points it at π_t, π_ref, π_{t+1} in turn."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    with HFSampler(model, tok, max_new_tokens=4) as s:
        a = s.sample(PROMPTS, 2, seed=0)
        s.set_policy(other)
        assert s.model is other and s.sample(PROMPTS, 2, seed=0) != a
        s.set_policy(model)
        assert s.sample(PROMPTS, 2, seed=0) == a
