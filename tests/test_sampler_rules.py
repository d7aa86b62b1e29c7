"""The samplers' shared rules (issue 21, vLLM): the model's context and one prompt-length check for both samplers,
before any engine starts; ``sampler: auto`` from the recorded cost model; HF when vLLM cannot load an architecture;
the CPU engine's settings (no chunked prefill, max_model_len and KV cache sized from the run); TRL's vllm_* config
names. The real engine's side of these is tests/test_vllm.py (``make test-vllm``)."""

import os
import types

import pytest
import torch

import inpo._optional
from inpo.generation import HFSampler, make_sampler
from inpo.generation.cost import ModelShape, choose_backend, model_shape
from inpo.generation.limits import (CPU_KV_BLOCK_TOKENS, SamplingPlan, check_prompt_lengths, context_length,
                                    cpu_kv_cache_bytes, kv_bytes_per_token)

CONTEXT = 64


@pytest.fixture(scope="module")
def tok():
    from inpo.data.tokenizer import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _prompt_of(tok, n_tokens: int) -> str:
    """A prompt whose template encoding has at least ``n_tokens`` tokens."""
    from inpo.data.chat import encode_prompt

    words = 1
    while len(encode_prompt(tok, "ocean " * words)) < n_tokens:
        words += 1
    return "ocean " * words


def test_context_length_reads_the_config_as_vllm_does():
    ns = types.SimpleNamespace
    assert context_length(ns(max_position_embeddings=4096, n_positions=1024)) == 1024  # the smallest key
    assert context_length(ns(max_position_embeddings=8192, model_max_length=131072)) == 131072  # Cohere's key wins
    assert context_length(ns(hidden_size=8)) == 2048  # no key: vLLM's assumption
    linear = ns(max_position_embeddings=2048, rope_parameters={"rope_type": "linear", "factor": 4.0})
    assert context_length(linear) == 8192
    llama3 = ns(max_position_embeddings=2048, rope_parameters={"rope_type": "llama3", "factor": 8.0})
    assert context_length(llama3) == 2048  # already scaled in the config


def test_prompt_length_check_names_the_prompt_and_the_fix():
    check_prompt_lengths([10, 48], 16, 64)  # 48 + 16 = 64 fits exactly
    with pytest.raises(ValueError, match=r"prompt 1 has 49 tokens: with max_new_tokens=16 it needs 65 > the model's "
                                         r"context \(64 tokens\); set max_prompt_length <= 48"):
        check_prompt_lengths([10, 49], 16, 64)
    with pytest.raises(ValueError, match="leaves no room"):
        check_prompt_lengths([1], 64, 64)


def test_hf_sampler_refuses_a_prompt_that_cannot_get_its_new_tokens(model, tok):
    """Near the limit HF would generate past the context; vLLM would silently cut the response short. Both refuse,
    and TRL's max_prompt_length (keep the last tokens) makes it fit."""
    long = _prompt_of(tok, CONTEXT - 8)
    with pytest.raises(ValueError, match=r"prompt 1 \('ocean.*max_new_tokens=16.*set max_prompt_length <= 48"):
        HFSampler(model, tok, max_new_tokens=16).sample(["Hi", long], 1)
    out = HFSampler(model, tok, max_new_tokens=16, max_prompt_length=48).sample(["Hi", long], 1)
    assert len(out) == 2


class FakeLLM:
    """Stands in for vllm.LLM: records its arguments (no engine)."""

    made: list = []
    binding: list = []  # VLLM_CPU_OMP_THREADS_BIND while the engine starts (its processes inherit it)

    def __init__(self, model, tokenizer, **kw):
        FakeLLM.made.append(kw)
        FakeLLM.binding.append(os.environ.get("VLLM_CPU_OMP_THREADS_BIND"))


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.made, FakeLLM.binding = [], []
    fake = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=dict, __version__="0.32.0")
    monkeypatch.setattr(inpo._optional, "require", lambda name: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return fake


def _plan(longest: int, rows: int = 40, max_new: int = 16) -> SamplingPlan:
    return SamplingPlan(((rows, rows * longest),), max_new, longest, weight_updates=2)


def test_cpu_engine_settings(model, tok, fake_vllm):
    """No chunked prefill (its seeded-generator rewind kills the CPU engine past 4096 prompt tokens), the prompt
    exiting executor, max_model_len and the KV cache sized from the run's plan."""
    from inpo.generation.vllm import VLLMSampler

    plan = _plan(30)
    s = VLLMSampler(model, tok, max_new_tokens=16, plan=plan)
    kw = FakeLLM.made[-1]
    assert kw["enable_chunked_prefill"] is False and kw["enforce_eager"] is True
    assert kw["distributed_executor_backend"] == "inpo.generation.vllm_worker.InpoExecutor"
    assert kw["max_model_len"] == s.max_model_len == 46
    per_token = kv_bytes_per_token(model.config, 4)
    assert per_token == 2 * 2 * 1 * 16 * 4  # K and V x layers x KV heads x head dim x fp32
    assert kw["kv_cache_memory_bytes"] == cpu_kv_cache_bytes(per_token, 46, plan) >= 2 * CPU_KV_BLOCK_TOKENS * per_token
    VLLMSampler(model, tok, max_new_tokens=16, plan=plan, max_model_len=60, kv_cache_memory_bytes=1 << 20)
    assert FakeLLM.made[-1]["max_model_len"] == 60 and FakeLLM.made[-1]["kv_cache_memory_bytes"] == 1 << 20
    s.max_model_len = 40  # a call's prompts are checked against the engine's limit before generating
    with pytest.raises(ValueError, match="prompt 0 .* > the vLLM engine's max_model_len"):
        s.sample([_prompt_of(tok, 30)], 1)


def test_cpu_thread_binding_rule():
    """vLLM's CPU "auto" keeps a core for its scheduler: on a small host whose every CPU runs a trainer thread the
    worker gets all of them instead (1.6x the tokens/s on 2 cores); with fewer threads or on a larger host vLLM
    decides."""
    from inpo.generation.vllm import cpu_thread_binding

    assert cpu_thread_binding(2, {0, 1}) == "0,1"
    assert cpu_thread_binding(8, [3, 1]) == "1,3"  # never more CPUs than the process may use
    assert cpu_thread_binding(1, [0, 1]) is None  # one thread: "auto" already gives it a core of its own
    assert cpu_thread_binding(3, [2, 3, 4, 5]) is None and cpu_thread_binding(0, [0]) is None
    assert cpu_thread_binding(5, range(5)) is None and cpu_thread_binding(2, []) is None


def test_the_cpu_engine_starts_with_the_binding_and_the_users_choice_wins(model, tok, fake_vllm, monkeypatch):
    from inpo.generation import vllm as gv
    from inpo.generation.vllm import VLLMSampler

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(gv.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    s = VLLMSampler(model, tok, max_new_tokens=16, plan=_plan(30))
    assert s.cpu_omp_binding == "0,1" and FakeLLM.binding[-1] == "0,1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # restored after the start
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    VLLMSampler(model, tok, max_new_tokens=16, plan=_plan(30))
    assert FakeLLM.binding[-1] == "nobind" and os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setattr(gv.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    s = VLLMSampler(model, tok, max_new_tokens=16, plan=_plan(30))
    assert FakeLLM.binding[-1] is None and s.cpu_omp_binding == "auto"  # a larger host: vLLM's own "auto"


def test_vllm_limits_are_checked_before_the_engine_starts(model, tok, fake_vllm):
    from inpo.generation.vllm import VLLMSampler

    with pytest.raises(ValueError, match=f"vllm_max_model_length=100 exceeds the model's context \\({CONTEXT}"):
        VLLMSampler(model, tok, max_model_len=100)
    with pytest.raises(ValueError, match="needs 46 tokens > vllm_max_model_length=40"):
        VLLMSampler(model, tok, max_new_tokens=16, plan=_plan(30), max_model_len=40)
    assert FakeLLM.made == []  # no engine was started


def test_kv_cache_holds_the_largest_call_within_a_cap(monkeypatch):
    import inpo.generation.limits as limits

    monkeypatch.setattr(limits, "_available_memory_bytes", lambda: 1 << 40)
    block = CPU_KV_BLOCK_TOKENS
    # 40 rows of <= 46 tokens: one block each (+1 spare); at least one max_model_len sequence
    assert cpu_kv_cache_bytes(10, 46, _plan(30)) == 40 * 2 * block * 10
    assert cpu_kv_cache_bytes(10, 4096, _plan(30, rows=1)) == (4096 // block + 1) * block * 10  # one full sequence
    assert cpu_kv_cache_bytes(10, 46, _plan(30, rows=1000)) == 256 * 2 * block * 10  # vLLM runs <= 256 at once
    monkeypatch.setattr(limits, "_available_memory_bytes", lambda: 4 * 40 * block * 10)
    assert cpu_kv_cache_bytes(10, 46, _plan(30)) == 40 * block * 10  # a quarter of the available memory
    with pytest.raises(ValueError, match="one 131072-token sequence needs .* lower vllm_max_model_length"):
        cpu_kv_cache_bytes(10, 131072, _plan(30))


def _costs(hf_token_s: float, vllm_start_s: float) -> dict:
    shape = ModelShape(params=1_000_000, layers=2, flops_per_token=2e6, weight_bytes=4_000_000)
    flops = shape.flops_per_token

    def terms(token_s, start):
        return {"call_s": 0.01, "step_s_per_layer": 1e-3, "decode_gflops": flops / token_s / 1e9,
                "prefill_gflops": flops / (token_s / 10) / 1e9, "start_s": start, "update_s": 0.5 if start else 0.0}

    return {"cpu": {"models": [{"name": "m", "shape": shape.__dict__, "hf": terms(hf_token_s, 0.0),
                                "vllm": terms(1e-4, vllm_start_s), "source": {"date": "d", "loadavg_1m": [0.1]}}]}}


def test_auto_picks_the_sampler_predicted_faster():
    shape = ModelShape(params=1_000_000, layers=2, flops_per_token=2e6, weight_bytes=4_000_000)
    costs = _costs(hf_token_s=1e-3, vllm_start_s=60.0)
    small = SamplingPlan(((100, 1000),), 16, 10)  # 1600 tokens: 1.6 s on HF, 60 s of engine start
    big = SamplingPlan(((100_000, 10**6),), 16, 10)  # 1.6 M tokens: 1600 s on HF, 60 + 160 s on vLLM
    pick, why = choose_backend(shape, small, device_kind="cpu", hf_batch_rows=128, costs=costs)
    assert pick == "hf" and "vLLM" in why and "HF generate" in why and "engine start" in why
    assert choose_backend(shape, big, device_kind="cpu", hf_batch_rows=128, costs=costs)[0] == "vllm"
    # nothing measured on the device kind: the old defaults, said so
    assert choose_backend(shape, big, device_kind="cuda", hf_batch_rows=128, costs=costs) == \
        ("vllm", "no sampler cost measurement recorded for cuda (python -m bench.sampler_cost); vllm by default")
    assert choose_backend(shape, big, device_kind="cpu", hf_batch_rows=128, costs={})[0] == "hf"


def test_model_shape_counts_the_head_once(model, tok):
    from transformers import LlamaForCausalLM

    from inpo.train.model import tiny_llama_config

    s = model_shape(model)  # untied: the input embedding is a lookup, the head a GEMM
    v, h = model.config.vocab_size, model.config.hidden_size
    assert s.params == sum(p.numel() for p in model.parameters()) and s.layers == 2
    assert s.flops_per_token == 2 * (s.params - v * h) and s.weight_bytes == 4 * s.params
    tied = LlamaForCausalLM(tiny_llama_config(len(tok)))
    assert tied.config.tie_word_embeddings
    assert model_shape(tied).flops_per_token == 2 * sum(p.numel() for p in tied.parameters())


def test_the_recorded_constants_pick_hf_for_the_default_run(tok):
    """The default run (embedded task, default policy's shape) measured 1.45-2.1x longer with vLLM than with HF
    (issue 21); the recorded constants must predict that."""
    from transformers import LlamaForCausalLM

    from inpo.generation.cost import load_costs
    from inpo.online import sampling_plan
    from inpo.train.config import TrainConfig
    from inpo.train.model import tiny_llama_config

    if not load_costs().get("cpu"):
        pytest.skip("no CPU sampler constants recorded")
    policy = LlamaForCausalLM(tiny_llama_config(len(tok)))
    plan = sampling_plan(TrainConfig().validate(), tok, policy)
    assert plan.rows > 3 * 435 * 8 and plan.max_new_tokens == 24
    pick, why = choose_backend(model_shape(policy), plan, device_kind="cpu", hf_batch_rows=128)
    assert pick == "hf", why


def test_auto_falls_back_to_hf_when_vllm_cannot_load_the_architecture(model, tok, monkeypatch):
    import inpo.generation
    import inpo.generation.vllm as gv

    def refuse(*a, **k):
        raise gv.UnsupportedArchitecture("vLLM 0.32.0 cannot load architecture FooForCausalLM (config.architectures); "
                                         "sample with HF generate instead: --sampler hf")

    monkeypatch.setattr(inpo.generation, "auto_backend", lambda *a, **k: ("vllm", "predicted faster"))
    monkeypatch.setattr(inpo.generation, "VLLMSampler", refuse)
    lines = []
    s = make_sampler("auto", model, tok, say=lines.append, max_new_tokens=4)
    assert isinstance(s, HFSampler)
    assert lines == ["[inpo] sampler auto: vllm (predicted faster)",
                     "[inpo] sampler auto: hf (vLLM 0.32.0 cannot load architecture FooForCausalLM "
                     "(config.architectures))"]
    with pytest.raises(gv.UnsupportedArchitecture, match="--sampler hf"):
        make_sampler("vllm", model, tok, say=lines.append)


def test_vllms_unsupported_architecture_error_is_one_short_line(model, tok, fake_vllm):
    from inpo.generation.vllm import UnsupportedArchitecture, VLLMSampler

    names = ", ".join(f"'Arch{i}ForCausalLM'" for i in range(400))  # vLLM appends its whole list (~10 KB)

    class Refusing:
        def __init__(self, *a, **k):
            raise ValueError(f"Model architectures ['FooForCausalLM'] are not supported for now. Supported "
                             f"architectures: dict_keys([{names}])")

    fake_vllm.LLM = Refusing
    with pytest.raises(UnsupportedArchitecture) as err:
        VLLMSampler(model, tok)
    msg = str(err.value)
    assert "FooForCausalLM" in msg and "--sampler hf" in msg and len(msg) < 200 and "Arch1" not in msg


def test_auto_without_vllm_says_hf_and_the_missing_message_matches(model, tok, monkeypatch):
    from inpo.generation import auto_backend

    monkeypatch.setattr(inpo._optional, "available", lambda name: False)
    assert auto_backend(model) == ("hf", "vLLM is not installed")
    text = inpo._optional._WHAT["vllm"]
    assert "falls back" not in text and "--sampler vllm` needs it" in text and "auto" in text


def test_trl_vllm_config_names():
    from inpo.train.config import load_config

    cfg = load_config(overrides={"use_vllm": True, "vllm_max_model_length": 512, "vllm_gpu_memory_utilization": 0.3,
                                 "vllm_mode": "colocate", "vllm_tensor_parallel_size": 1, "vllm_model_impl": "vllm"})
    assert cfg.sampler == "vllm"
    assert cfg.vllm_options() == {"max_model_len": 512, "gpu_memory_utilization": 0.3, "kv_cache_memory_bytes": None,
                                  "model_impl": "vllm"}
    assert load_config(overrides={"use_vllm": False}).sampler == "hf"
    for bad, match in (({"vllm_mode": "server"}, "vllm_mode='server' is not supported .*colocate"),
                       ({"vllm_tensor_parallel_size": 2}, "vllm_tensor_parallel_size=2 is not supported"),
                       ({"vllm_enable_sleep_mode": True}, "vllm_enable_sleep_mode=True is not supported"),
                       ({"vllm_gpu_memory_utilization": 1.5}, r"vllm_gpu_memory_utilization must be in \(0, 1\]"),
                       ({"vllm_max_model_length": 0}, "vllm_max_model_length must be a positive int"),
                       ({"vllm_model_impl": "sglang"}, "vllm_model_impl must be one of")):
        with pytest.raises(ValueError, match=match):
            load_config(overrides=bad)


def test_a_run_refuses_a_prompt_over_the_context_before_anything_starts(tok, tmp_path, capsys):
    """One line naming the prompt and the fix, exit 2, no run directory; max_prompt_length makes it fit."""
    from transformers import LlamaForCausalLM

    from inpo.data.prompts import load_prompts, split_prompts
    from inpo.online import sampling_plan
    from inpo.online.cli import main as train_main
    from inpo.train.config import load_config
    from inpo.train.model import export_policy, tiny_llama_config
    from tests.test_online import micro_args

    policy = LlamaForCausalLM(tiny_llama_config(len(tok), max_position_embeddings=128))
    folder = str(export_policy(policy, tok, tmp_path / "model"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([f"Describe the sea {i}." for i in range(20)] + ["ocean " * 200]) + "\n")
    out = tmp_path / "run"
    capsys.readouterr()
    rc = train_main(micro_args(folder, out, "--prompts", str(prompts), "--sampler", "hf", "--n-eval", "100"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "prompt" in err[0] and "> the model's context (128 tokens); set max_prompt_length <= 122" in err[0], err
    assert not out.exists()
    cfg = load_config(overrides={"model": folder, "prompts": str(prompts), "max_new_tokens": 6,
                                 "max_prompt_length": 100, "k": 3, "iterations": 2})
    plan = sampling_plan(cfg, tok, policy)
    pool = load_prompts(prompts)
    n_train, n_eval = len(split_prompts(pool, "train")), len(split_prompts(pool, "eval"))
    assert plan.longest_prompt == 100 and plan.max_new_tokens == 6
    assert [rows for rows, _ in plan.calls] == [n_train * 3] * 2 + [n_eval * cfg.eval_k] * 3
    assert plan.weight_updates == 4
