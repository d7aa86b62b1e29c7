"""An LLM judge: any local chat model (a causal LM folder, or a name such as ``smollm2``) as a pairwise preference
oracle, ``--oracle judge:DIR``.

The judge reads one user turn -- :data:`JUDGE_TEMPLATE` filled with the question and the two responses, labelled
``A`` (first) and ``B`` (second) -- through its own chat template with the generation prompt, then the start of its
answer, :data:`ANSWER_PREFIX` ("The better response is Response"). Its next-token logits at that point give the
raw, position-dependent probability

    p(first ≻ second) = softmax(logit[" A"], logit[" B"])[0]

over the two label tokens only (the rest of the vocabulary is ignored). Position bias is cancelled by asking both
orders and averaging: ``P(a ≻ b) = ½ (p(a, b) + 1 − p(b, a))``, so ``P(a ≻ b) + P(b ≻ a) = 1`` and ``P(y ≻ y) = ½``
whatever the judge's bias. :meth:`JudgeOracle.raw_prob` exposes the unaveraged ``p`` to measure that bias
(``python -m bench.judge_bias``).

Cost: one counted query = two forwards of the judge over the whole judging prompt (``forwards`` counts them; a
judging text that occurs twice in one call, as both orders of ``y`` vs ``y`` do, is run once). Texts are sorted by
length and run ``batch_size`` at a time, right-padded (causal attention never lets a real token see
the padding), and only the last real position's logits are computed. A conversational prompt is shown as its last
user turn (:func:`inpo.data.chat.prompt_text`); each response is cut to ``max_response_tokens`` tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
import numpy as np

from inpo.data.chat import prompt_text
from inpo.oracles.base import PreferenceOracle
from inpo.oracles.models import load_local_model

__all__ = ["JudgeOracle", "JUDGE_TEMPLATE", "ANSWER_PREFIX", "LABELS", "load_causal_lm"]

JUDGE_TEMPLATE = ("You are judging two responses to the same question. Pick the response that answers the question "
                  "better: correct, helpful, clear and complete.\n\n"
                  "[Question]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
                  "Which response is better? Answer with one letter, A or B.")
# The judge's answer starts with this text, so each label is the natural next token. On 12 hand-written pairs of a right
# and a plainly wrong answer, SmolLM2-135M-Instruct averaged over both orders picked the right one 11 times with this
# prefix and 5 times with none (labels "A"/"B" straight after the generation prompt): bench/results/judge-bias.jsonl.
ANSWER_PREFIX = "The better response is Response"
LABELS = (" A", " B")


def load_causal_lm(path: str | os.PathLike, *, device="cpu", dtype=None):
    """``(model, tokenizer)`` from a local causal-LM folder (``save_pretrained``) or a real model's name."""
    return load_local_model(path, "AutoModelForCausalLM", "a chat model (the judge)", device=device, dtype=dtype)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class JudgeOracle(PreferenceOracle):
    """A chat model as a pairwise judge (the module docstring says how).

    ``model``: a folder or name (loaded on ``device`` in ``dtype``), or a loaded causal LM with its ``tokenizer``.
    ``labels``: the two answer labels, each one token after the judging prompt in the judge's tokenizer (checked).
    ``template``: the judging turn, with ``{prompt}``, ``{a}`` and ``{b}``. ``answer_prefix``: text the judge's
    answer starts with, before the label (``""`` with labels ``("A", "B")``: the label is the answer's first token).
    """

    def __init__(self, model, tokenizer=None, *, device="cpu", dtype=None, batch_size: int = 8,
                 max_response_tokens: int = 512, template: str = JUDGE_TEMPLATE, labels: tuple[str, str] = LABELS,
                 answer_prefix: str = ANSWER_PREFIX, mode: str = "deterministic", seed: int = 0,
                 tie_tol: float = 1e-6):
        super().__init__(mode=mode, seed=seed, tie_tol=tie_tol)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_response_tokens = _positive_int("max_response_tokens", max_response_tokens)
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in template:
                raise ValueError(f"template must contain {field}, got {template!r}")
        if isinstance(model, (str, os.PathLike)):
            model, loaded_tok = load_causal_lm(model, device=device, dtype=dtype)
            tokenizer = tokenizer or loaded_tok
        elif tokenizer is None:
            raise ValueError("tokenizer is required when model is an object rather than a path")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the judge's tokenizer has no chat template; the judge must be a chat model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.template, self.answer_prefix = template, answer_prefix
        self.forwards = 0
        self.label_ids = self._label_ids(labels)

    def _label_ids(self, labels) -> tuple[int, int]:
        """The token id of each label where the judge would write it: right after the rendered judging prompt."""
        if not (isinstance(labels, (tuple, list)) and len(labels) == 2 and all(isinstance(x, str) and x for x in labels)
                and labels[0] != labels[1]):
            raise ValueError(f"labels must be two different non-empty strings, got {labels!r}")
        probe = self.judge_texts(["Q"], ["x"], ["y"])[0]
        base = self._encode(probe)
        ids = []
        for label in labels:
            full = self._encode(probe + label)
            if len(full) != len(base) + 1 or full[:len(base)] != base:
                raise ValueError(f"label {label!r} is not one token after the judging prompt in this tokenizer "
                                 f"({len(full) - len(base)} tokens); pick labels (and answer_prefix) that are")
            ids.append(full[-1])
        return ids[0], ids[1]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cut(self, response: str) -> str:
        ids = self._encode(response)
        n = self.max_response_tokens
        return response if len(ids) <= n else self.tokenizer.decode(ids[:n])

    def judge_texts(self, prompts: Sequence, first: Sequence[str], second: Sequence[str]) -> list[str]:
        """The judging conversations, rendered (chat template + generation prompt + ``answer_prefix``)."""
        out = []
        for x, y1, y2 in zip(prompts, first, second):
            turn = self.template.format(prompt=prompt_text(x), a=self._cut(y1), b=self._cut(y2))
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": turn}], tokenize=False,
                                                      add_generation_prompt=True)
            out.append(text + self.answer_prefix)
        return out

    def _label_logits(self, texts: list[str]) -> np.ndarray:
        """``[n, 2]`` float64 logits of the two labels after each text; ``batch_size`` texts per forward."""
        import torch

        unique = list(dict.fromkeys(texts))  # a text asked twice (y vs y: both orders) is one forward, one answer
        ids = [self._encode(t) for t in unique]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), 2))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                rows = order[s:s + self.batch_size]
                lens = torch.tensor([len(ids[i]) for i in rows])
                batch = torch.full((len(rows), int(lens.max())), pad, dtype=torch.long)
                for r, i in enumerate(rows):
                    batch[r, :len(ids[i])] = torch.tensor(ids[i])
                mask = (torch.arange(batch.shape[1])[None, :] < lens[:, None]).long()
                keep = torch.unique(lens - 1)  # only the positions some row ends at: [B, U, V] logits, not [B, T, V]
                logits = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device),
                                    logits_to_keep=keep.to(self.device), use_cache=False).logits
                col = torch.searchsorted(keep, lens - 1).to(logits.device)
                last = logits[torch.arange(len(rows), device=logits.device), col]
                out[rows] = last[:, list(self.label_ids)].double().cpu().numpy()
                self.forwards += len(rows)
        where = {t: i for i, t in enumerate(unique)}
        return out[[where[t] for t in texts]]

    def raw_prob(self, prompts: Sequence, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """The judge's unaveraged p(first ≻ second) (uncounted): position bias included."""
        z = self._label_logits(self.judge_texts(prompts, first, second))
        return 1.0 / (1.0 + np.exp(z[:, 1] - z[:, 0]))

    def _probs(self, prompts, a, b) -> np.ndarray:
        n = len(a)
        p = self.raw_prob(list(prompts) * 2, list(a) + list(b), list(b) + list(a))
        return 0.5 * (1.0 + (p[:n] - p[n:]))  # exactly ½ where the two orders' p agree

    def __repr__(self) -> str:
        return f"JudgeOracle({type(self.model).__name__}, mode={self.mode!r}, queries={self.queries})"
