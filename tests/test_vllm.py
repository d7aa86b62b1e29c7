"""The real-engine tier (``make test-vllm``, its own venv with vLLM's CPU build): the vLLM sampler against the
trainer and the HF sampler on the same policy. One engine serves the whole module (its start-up took 139-250 s on
this 2-core machine under load); tests/test_vllm_online.py runs ``inpo train --sampler vllm`` end to end.
The policy has an 8192-token context so that one call can hold prompts far past vLLM's 4096-token step budget.

Tolerance: the sampler's summed fp32 log-probs agree with :func:`inpo.train.step.sequence_logps_of` (through the
trainer's ``precompute_logps``) to ``LOGP_ATOL`` nats per sequence; measured <= 1.5e-5 (bench/results/vllm/).
"""

import copy

import pytest
import torch

pytestmark = pytest.mark.vllm

LOGP_ATOL = 1e-4
MAX_NEW = 12


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from inpo.data.tokenizer import default_tokenizer

    return default_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def policy(tok):
    """The default policy's shape (tied embeddings: the case vLLM's own reload gets wrong on CPU), random weights."""
    from transformers import LlamaForCausalLM

    from inpo.train.model import tiny_llama_config

    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, max_position_embeddings=8192)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def sampler(policy, tok):
    from inpo.generation.vllm import VLLMSampler

    s = VLLMSampler(policy, tok, max_new_tokens=MAX_NEW, kv_cache_memory_bytes=256 << 20)
    yield s
    s.close()


def _prompts(n=6):
    from inpo.data.prompts import default_prompts

    return default_prompts("eval", n=n, seed=0)


def _trainer_logps(model, tok, prompts, k, token_ids):
    """The trainer's log-probs of exactly the sampled tokens (stop token included when sampled)."""
    from inpo.data.tokenizer import encode_prompt
    from inpo.train.loop import precompute_logps

    ids = [encode_prompt(tok, p) for p in prompts]
    seqs = [(ids[r // k], token_ids[r]) for r in range(len(token_ids))]
    return precompute_logps(model, seqs, max_tokens=8192, impl="torch", pairwise=False)


def test_engine_runs_in_the_policys_dtype(sampler):
    assert sampler.dtype == "float32"
    assert sampler.llm.llm_engine.model_config.dtype == torch.float32  # not vLLM's "auto" (bf16 on CPU)


def test_the_context_rule_is_the_engines(sampler, policy, tok):
    """Both samplers check prompt + max_new_tokens against inpo.generation.limits.context_length: vLLM's own."""
    from inpo.generation.limits import context_length

    assert sampler.max_model_len == sampler.llm.llm_engine.model_config.max_model_len == \
        context_length(policy.config) == 8192


def test_calls_far_past_the_step_budget_are_exact_and_reproducible(sampler, policy, tok):
    """Seeded requests whose prompts exceed the step budget (4096 tokens on CPU): with chunked prefill vLLM rewinds
    the seeded generator of a split prefill and the CPU engine dies ("CPU Generator does not use offset"). Here one
    call holds ~34k prompt tokens (13 prompts x 2 samples), one prompt alone ~5000: it samples, its log-probs are
    the trainer's, and a row is the same whatever else is in the call."""
    from inpo.data.tokenizer import encode_prompt

    def long(text, tokens):  # the text repeated until its encoding has about ``tokens`` tokens
        once = len(encode_prompt(tok, (text + " ") * 2)) - len(encode_prompt(tok, text + " "))
        return (text + " ") * max(1, tokens // max(once, 1))

    base = _prompts(12)
    prompts = [long(p, 1000) for p in base] + [long(base[0], 5000)]
    n = [len(encode_prompt(tok, p)) for p in prompts]
    assert sum(n) * 2 > 6 * 4096 and max(n) > 4096 and max(n) + MAX_NEW <= 8192, n
    out = sampler.sample(prompts, 2, seed=21)
    ids, logps = sampler.last_token_ids, torch.tensor(sampler.last_logps)
    torch.testing.assert_close(logps, _trainer_logps(policy, tok, prompts, 2, ids), atol=LOGP_ATOL, rtol=0)
    assert sampler.sample(prompts, 2, seed=21) == out
    assert sampler.sample(prompts[:3], 2, seed=21) == out[:3]


def test_an_architecture_vllm_cannot_load_is_one_line_and_auto_falls_back(tok, monkeypatch):
    """GPT-Neo trains with HF but vLLM 0.32 has no implementation of it: --sampler vllm says so in one line (not
    vLLM's list of ~390 architectures); auto falls back to HF generate with one line. Refused at configuration,
    before an engine starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import inpo.generation
    from inpo.generation import HFSampler, make_sampler
    from inpo.generation.vllm import UnsupportedArchitecture

    cfg = AutoConfig.for_model("gpt_neo", vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2,
                               attention_types=[[["global"], 2]], max_position_embeddings=128)
    neo = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitecture) as err:
        make_sampler("vllm", neo, tok, max_new_tokens=4)
    assert str(err.value) == ("vLLM 0.32.0 cannot load architecture GPTNeoForCausalLM (config.architectures); "
                              "sample with HF generate instead: --sampler hf")
    monkeypatch.setattr(inpo.generation, "auto_backend", lambda *a, **k: ("vllm", "test"))
    lines = []
    assert isinstance(make_sampler("auto", neo, tok, max_new_tokens=4, say=lines.append), HFSampler)
    assert lines[-1] == "[inpo] sampler auto: hf (vLLM 0.32.0 cannot load architecture GPTNeoForCausalLM " \
                        "(config.architectures))"


def test_sequence_logps_match_the_trainer(sampler, policy, tok):
    prompts = _prompts()
    out = sampler.sample(prompts, 3, seed=11)
    assert [len(g) for g in out] == [3] * len(prompts)
    ref = _trainer_logps(policy, tok, prompts, 3, sampler.last_token_ids)
    got = torch.tensor(sampler.last_logps)
    assert ref.abs().min() > 1.0  # real sums over several tokens, not empty responses
    torch.testing.assert_close(got, ref, atol=LOGP_ATOL, rtol=0)
    for ids, n, text in zip(sampler.last_token_ids, sampler.last_lengths, [y for g in out for y in g]):
        stopped = ids[-1] in sampler.stop_ids
        assert n == len(ids) - stopped <= MAX_NEW and (stopped or n == MAX_NEW)
        assert all(t not in sampler.stop_ids for t in ids[:-1])  # generation ends at the first stop token
        assert text == tok.decode(ids[:n], skip_special_tokens=True)


def test_samples_are_independent_across_prompts_like_hf(sampler, policy, tok):
    """The same prompt six times: with one seed per call (vLLM seeds sample j with seed + j) every copy would get
    the same k texts; each (prompt, sample) has its own stream, so all 6 x 4 differ, as with HF."""
    from inpo.generation import HFSampler

    prompts = [_prompts(1)[0]] * 6
    ours = sampler.sample(prompts, 4, seed=3)
    hf = HFSampler(policy, tok, max_new_tokens=MAX_NEW).sample(prompts, 4, seed=3)
    n_ours, n_hf = len({y for g in ours for y in g}), len({y for g in hf for y in g})
    assert n_hf == 24 and n_ours == n_hf, (n_ours, n_hf)


def test_reproducible_per_seed_and_independent_of_the_batch(sampler):
    prompts = _prompts(4)
    a = sampler.sample(prompts, 3, seed=5)
    assert sampler.sample(prompts, 3, seed=5) == a
    assert sampler.sample(prompts[:2], 3, seed=5) == a[:2]  # a row's stream depends on (seed, prompt i, sample j)
    b = sampler.sample(prompts, 3, seed=6)
    assert all(x != y for ga, gb in zip(a, b) for x, y in zip(ga, gb))


def test_set_policy_reloads_the_running_engine_in_place(sampler, policy, tok):
    """After ``set_policy(π_{t+1})`` the same engine samples from π_{t+1}: its log-probs are the trainer's under
    π_{t+1} (not π_t's); back to π_t, they are π_t's again. The prompts are longer than a KV block (128 tokens on
    CPU) so that the prefix cache holds π_t's KV for them: the update must drop it."""
    from inpo.data.tokenizer import encode_prompt

    prompts = [(p + " ") * 28 for p in _prompts(4)]
    assert all(140 < len(encode_prompt(tok, p)) < 256 - MAX_NEW for p in prompts)
    llm = sampler.llm
    nxt = copy.deepcopy(policy)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in nxt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    sampler.sample(prompts, 2, seed=1)  # fills the prefix cache with π_t's KV for these prompts
    try:
        sampler.set_policy(nxt)
        sampler.sample(prompts, 2, seed=1)
        ids = sampler.last_token_ids
        got = torch.tensor(sampler.last_logps)
        torch.testing.assert_close(got, _trainer_logps(nxt, tok, prompts, 2, ids), atol=LOGP_ATOL, rtol=0)
        assert (got - _trainer_logps(policy, tok, prompts, 2, ids)).abs().min() > 0.1  # π_t would differ
    finally:
        sampler.set_policy(policy)
    assert sampler.llm is llm and sampler.weight_updates == 2  # no new engine
    sampler.sample(prompts, 2, seed=1)
    torch.testing.assert_close(torch.tensor(sampler.last_logps),
                               _trainer_logps(policy, tok, prompts, 2, sampler.last_token_ids), atol=LOGP_ATOL, rtol=0)


def test_close_is_prompt_and_leaves_no_process(sampler):
    """Last in the module (it closes the module's engine). The engine and worker processes skip the interpreter's
    4-8 s teardown (inpo.generation.vllm_worker): closing took 11-18 s (the worker's 5 s grace, a SIGTERM, the
    engine's teardown), now about 4 s; the 8 s bound fails the old path. tests/test_vllm_online.py checks the log
    of a whole run for the SIGTERM warning."""
    import multiprocessing
    import time

    t0 = time.perf_counter()
    sampler.close()
    seconds = time.perf_counter() - t0
    assert seconds < 8.0, seconds
    assert sampler.llm is None and not [c for c in multiprocessing.active_children() if c.is_alive()]
