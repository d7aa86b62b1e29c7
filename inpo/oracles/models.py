"""Oracles backed by local Hugging Face sequence-classification checkpoints (never the hub).

* :class:`RewardModelOracle` — a scalar reward model (``num_labels == 1``) under Bradley–Terry:
  ``P(a ≻ b) = σ(r(x, a) − r(x, b))``.
* :class:`PairwiseModelOracle` — a model that reads ``(x, a, b)`` together and outputs ``p(a, b)``, the
  probability that the first response is better. Position bias is removed by symmetrising:
  ``P(a ≻ b) = ½ (p(a, b) + 1 − p(b, a))``, so ``P(a ≻ b) + P(b ≻ a) = 1`` exactly.

Both batch their forwards (``batch_size`` texts at a time), run under ``torch.inference_mode`` and keep
the model in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inpo.data.chat import as_messages
from inpo.data.tokenizer import load_tokenizer
from inpo.models import resolve_model
from inpo.oracles.base import PreferenceOracle

__all__ = ["RewardModelOracle", "PairwiseModelOracle", "load_classifier", "load_local_model", "PAIRWISE_TEMPLATE"]

PAIRWISE_TEMPLATE = "{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\nIs Response A better than Response B?"


def load_local_model(path: str | os.PathLike, auto_class: str, what: str, *, device="cpu", dtype=None):
    """``(model, tokenizer)`` through ``transformers.<auto_class>`` from a local ``save_pretrained`` folder or a real
    model's name (never the hub); ``what`` names the kind of model in errors."""
    import transformers

    path = Path(resolve_model(path))
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {str(path)!r} (expected a local save_pretrained() "
                                f"folder of {what} with config.json, or a real model's name such as 'smollm2')")
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} has no config.json; is it a Hugging Face model directory?")
    try:
        model = getattr(transformers, auto_class).from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ValueError(f"could not load {what} from {str(path)!r}: {exc}") from exc
    return model.to(device).eval(), load_tokenizer(path)


def load_classifier(path: str | os.PathLike, *, device="cpu", dtype=None):
    """``(model, tokenizer)`` from a local ``AutoModelForSequenceClassification`` directory."""
    return load_local_model(path, "AutoModelForSequenceClassification", "a sequence-classification model",
                            device=device, dtype=dtype)


class _ClassifierOracle(PreferenceOracle):
    def __init__(self, model, tokenizer=None, *, device="cpu", dtype=None, batch_size: int = 16,
                 max_length: int = 1024, mode: str = "deterministic", seed: int = 0, tie_tol: float = 1e-6):
        super().__init__(mode=mode, seed=seed, tie_tol=tie_tol)
        if isinstance(model, (str, os.PathLike)):
            loaded, loaded_tok = load_classifier(model, device=device, dtype=dtype)
            model, tokenizer = loaded, tokenizer or loaded_tok
        elif tokenizer is None:
            raise ValueError("tokenizer is required when model is an object rather than a path")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("tokenizer has neither a pad nor an eos token; cannot batch")
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # seq-cls heads find the last token by it
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.batch_size, self.max_length = batch_size, max_length

    def _chat(self, prompt, assistant: str | None) -> str:
        """The text the classifier reads: the whole conversation (a string prompt is one user turn; a
        conversational prompt keeps its system and earlier turns) through the classifier's chat template."""

        if getattr(self.tokenizer, "chat_template", None):
            messages = as_messages(prompt)
            if assistant is not None:
                messages = messages + [{"role": "assistant", "content": assistant}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
        return text if assistant is None else f"{text}\n\n{assistant}"

    def _logits(self, texts: list[str]) -> np.ndarray:
        """``[n, num_labels]`` float64 logits, ``batch_size`` texts per forward."""
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], add_special_tokens=False, padding=True,
                                     truncation=True, max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                chunks.append(self.model(**enc).logits.float().cpu().numpy().astype(np.float64))
        return np.concatenate(chunks, axis=0)


class RewardModelOracle(_ClassifierOracle):
    """Bradley–Terry oracle over a scalar reward model: ``P(a ≻ b) = σ(r_a − r_b)``.

    ``model`` is a local directory or a loaded model (then ``tokenizer`` is required). The reward
    model reads the chat-templated ``(prompt, response)`` conversation when the tokenizer has a chat
    template, else ``prompt + "\\n\\n" + response``.

    Queries: the reward model is consulted once per (prompt, response) it scores, so ``queries`` (and
    ``scored``) grow by one per response scored -- K per prompt when ranking K samples, two per compared pair.
    """

    def __init__(self, model, tokenizer=None, **kw):
        super().__init__(model, tokenizer, **kw)
        n = getattr(self.model.config, "num_labels", 1)
        if n != 1:
            raise ValueError(f"a reward model needs num_labels == 1 (one scalar), got num_labels={n}; "
                             "use PairwiseModelOracle (pairwise:PATH) for a classifier over (prompt, a, b)")
        self.scored = 0

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``[n]`` float64 rewards r(prompt_i, response_i); no pairwise queries are counted."""
        if len(prompts) != len(responses):
            raise ValueError(f"prompts and responses must have the same length, got {len(prompts)} and {len(responses)}")
        if not len(prompts):
            return np.zeros(0)
        r = self._logits([self._chat(x, y) for x, y in zip(prompts, responses)])[:, 0]
        self.scored += len(prompts)
        self.queries += len(prompts)
        return r

    def _count(self, n_pairs: int) -> None:
        pass  # score() counted the responses behind these pairs

    def _probs(self, prompts, a, b) -> np.ndarray:
        r = self.score(list(prompts) * 2, list(a) + list(b))
        z = r[: len(a)] - r[len(a):]
        return 1.0 / (1.0 + np.exp(-z))


class PairwiseModelOracle(_ClassifierOracle):
    """Pairwise preference model over ``(prompt, a, b)``, symmetrised over the two orders.

    The model reads ``template`` (with ``{prompt}``, ``{a}``, ``{b}``) as the user turn. With
    ``num_labels == 1`` the first-better probability is ``σ(logit)``; with ``num_labels == 2`` it is
    ``softmax(logits)[a_wins_label]``. Each counted query costs two forwards (both orders).
    """

    def __init__(self, model, tokenizer=None, *, template: str = PAIRWISE_TEMPLATE, a_wins_label: int = 0, **kw):
        super().__init__(model, tokenizer, **kw)
        n = getattr(self.model.config, "num_labels", 1)
        if n not in (1, 2):
            raise ValueError(f"a pairwise model needs num_labels 1 (sigmoid) or 2 (softmax), got {n}")
        if n == 2 and a_wins_label not in (0, 1):
            raise ValueError(f"a_wins_label must be 0 or 1, got {a_wins_label!r}")
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in template:
                raise ValueError(f"template must contain {field}, got {template!r}")
        self.template, self.a_wins_label = template, a_wins_label

    def raw_prob(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """The model's unsymmetrised p(first ≻ second) (uncounted)."""

        # The template fills the last user turn; a conversation's earlier turns stay before it.
        texts = [self._chat(as_messages(x)[:-1] + [{"role": "user", "content": self.template.format(
                     prompt=as_messages(x)[-1]["content"], a=y1, b=y2)}], None)
                 for x, y1, y2 in zip(prompts, first, second)]
        logits = self._logits(texts)
        if logits.shape[1] == 1:
            return 1.0 / (1.0 + np.exp(-logits[:, 0]))
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return p[:, self.a_wins_label]

    def _probs(self, prompts, a, b) -> np.ndarray:
        n = len(a)
        p = self.raw_prob(list(prompts) * 2, list(a) + list(b), list(b) + list(a))
        return 0.5 * (p[:n] + 1.0 - p[n:])
