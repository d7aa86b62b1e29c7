"""``sampler: auto``: predict each sampler's time for *this* run from a cost model whose constants were measured
(``python -m bench.sampler_cost``), and pick the faster one.

A sampler's time for a run is

    start + updates · update + Σ_calls [ call + steps · layers · step_per_layer
                                          + rows · max_new_tokens · F / decode_rate + prompt_tokens · F / prefill_rate ]

with ``F`` = 2 × (non-embedding parameters + the LM head's vocab × hidden) FLOPs per token and ``steps`` the decode
steps of a call: ``ceil(rows / batch) · max_new_tokens`` (HF: ``gen_batch_size`` rows per ``generate``; vLLM: up to
``max_num_seqs`` = 256 running sequences). ``start`` is vLLM's engine start (HF samples with the policy already in
memory: 0); ``update`` is vLLM's per-iteration weight export + in-place reload (HF: 0).

The constants (:data:`COSTS_FILE`, written by the bench) are per device kind and per measured model: the rule takes
the measured model nearest in parameter count and scales its compute terms to this model's ``F`` and layer count;
the fixed terms (start, update, call) are taken as measured. Where no model was measured on this device kind (CUDA
today) the rule has nothing to weigh and keeps vLLM on CUDA, HF on CPU, and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from inpo.generation.limits import SamplingPlan

__all__ = ["COSTS_FILE", "ModelShape", "model_shape", "load_costs", "predict_seconds", "choose_backend",
           "VLLM_MAX_NUM_SEQS"]

COSTS_FILE = Path(__file__).with_name("sampler_costs.json")
VLLM_MAX_NUM_SEQS = 256  # vLLM's default running sequences on CPU (LLM class) and most GPUs
_TERMS = ("call_s", "step_s_per_layer", "decode_gflops", "prefill_gflops")


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    flops_per_token: float  # forward FLOPs of one token
    weight_bytes: int

    @classmethod
    def from_dict(cls, d: dict) -> "ModelShape":
        return cls(int(d["params"]), int(d["layers"]), float(d["flops_per_token"]), int(d["weight_bytes"]))


def model_shape(model) -> ModelShape:
    """Parameter count, decoder layers, forward FLOPs per token and weight bytes of a transformers model."""
    import torch

    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    emb = model.get_input_embeddings()
    emb_params = emb.weight.numel() if isinstance(emb, torch.nn.Module) and hasattr(emb, "weight") else 0
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else emb_params
    tied = head is not None and emb_params and head.weight.data_ptr() == emb.weight.data_ptr()
    body = params - emb_params - (0 if tied or head is None else head_params)
    return ModelShape(params, int(text.num_hidden_layers), 2.0 * (body + head_params), weight_bytes)


def load_costs(path: Path | str | None = None) -> dict:
    """The recorded constants: ``{device_kind: {"models": [{"name", "shape", "hf", "vllm", "source"}, ...]}}``
    ({} when there is no file)."""
    p = Path(path) if path is not None else COSTS_FILE
    if not p.is_file():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def _nearest(models: list[dict], shape: ModelShape) -> dict:
    return min(models, key=lambda m: abs(math.log(max(m["shape"]["params"], 1)) - math.log(max(shape.params, 1))))


def predict_seconds(backend: str, measured: dict, shape: ModelShape, plan: SamplingPlan, *, batch_rows: int) -> float:
    """Predicted seconds ``backend`` takes to sample ``plan`` with the model ``shape``, from one measured model's
    constants ``measured`` (scaled to ``shape``)."""
    ref = ModelShape.from_dict(measured["shape"])
    k = measured[backend]
    f = shape.flops_per_token
    step = k["step_s_per_layer"] * shape.layers
    per_new = f / (k["decode_gflops"] * 1e9)
    per_prompt = f / (k["prefill_gflops"] * 1e9)
    max_new = plan.max_new_tokens
    total = k.get("start_s", 0.0) + plan.weight_updates * k.get("update_s", 0.0) * max(1.0, shape.weight_bytes /
                                                                                        max(ref.weight_bytes, 1))
    for rows, prompt_tokens in plan.calls:
        steps = math.ceil(rows / batch_rows) * max_new
        total += k["call_s"] + steps * step + rows * max_new * per_new + prompt_tokens * per_prompt
    return total


def choose_backend(shape: ModelShape, plan: SamplingPlan | None, *, device_kind: str, hf_batch_rows: int,
                   costs: dict | None = None) -> tuple[str, str]:
    """``(backend, reason)``: the sampler predicted faster for this model and plan on ``device_kind`` ("cpu" or
    "cuda"), and a one-line reason naming both predictions and where the constants come from."""
    costs = load_costs() if costs is None else costs
    entry = costs.get(device_kind) or {}
    models = [m for m in entry.get("models", []) if all(t in m.get(b, {}) for b in ("hf", "vllm") for t in _TERMS)]
    default = "vllm" if device_kind == "cuda" else "hf"
    if not models:
        return default, (f"no sampler cost measurement recorded for {device_kind} (python -m bench.sampler_cost); "
                         f"{default} by default")
    if plan is None or not plan.rows:
        return default, f"no sampling planned; {default} by default"
    m = _nearest(models, shape)
    t_hf = predict_seconds("hf", m, shape, plan, batch_rows=hf_batch_rows)
    t_vllm = predict_seconds("vllm", m, shape, plan, batch_rows=VLLM_MAX_NUM_SEQS)
    pick = "hf" if t_hf <= t_vllm else "vllm"
    src = m.get("source", {})
    return pick, (f"predicted {t_hf:.0f} s with HF generate vs {t_vllm:.0f} s with vLLM (engine start included) for "
                  f"{plan.rows} responses of <= {plan.max_new_tokens} tokens, scaled from {m['name']} "
                  f"({m['shape']['params'] / 1e6:.1f} M params; {src.get('date', '?')}, load "
                  f"{src.get('loadavg_1m', '?')})")
