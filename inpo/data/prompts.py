"""Prompt sets and SFT demonstrations of the embedded default task, plus loading user prompt files.

The default task is generated, not downloaded: ``inpo/assets/default_task.json`` holds its vocabulary
(topics, prompt templates, three style word families, response templates) and the seeded template
generator below turns it into

* prompts: every (topic, template) combination, e.g. ``"Describe the ocean."``, split once and for all
  into a fixed ``train`` and a disjoint ``eval`` set (the split does not depend on any seed);
* SFT demonstrations: responses of mixed quality and style, so that the warm-started reference policy
  has diversity for preference optimisation to improve on. Each demonstration independently gets the
  flaws the synthetic oracle (:mod:`inpo.oracles.synthetic`) penalises — off topic, no final
  punctuation, repeated words, too short or too long — and a dominant style family (rock / paper /
  scissors, occasionally mixed) that the oracle's intransitive term reads.
"""

from __future__ import annotations

import json
import os
import random
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from inpo.data.chat import check_prompt, encode_prompt, normalize_pair
from inpo.utils.io import check_input_file, read_utf8

__all__ = ["task_spec", "default_prompts", "load_prompts", "split_prompts", "sft_examples", "prompt_keywords", "words",
           "real_prompts_path", "SPLITS", "EVAL_FRACTION"]

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2
_SPLIT_SEED = 20240701  # fixed forever: changing it would leak eval prompts into old training runs

# Probabilities of each flaw in an SFT demonstration (independent). About 40 % come out flawless.
_FLAW_RATES = {"off_topic": 0.2, "no_end": 0.2, "repeat": 0.15, "short": 0.1, "long": 0.1}

_WORD = re.compile(r"[a-z]+")
# Words that never make a prompt's topic: template scaffolding and common function words.
_STOP = frozenset(
    "a an the of on in at to for about me my you your i we it is are be what how would could can "
    "describe tell write line say something give short note one sentence like please some and or "
    "this that with do does".split())


@lru_cache(maxsize=1)
def task_spec() -> dict:
    """The default task's vocabulary, read once from ``inpo/assets/default_task.json``."""
    text = resources.files("inpo").joinpath("assets/default_task.json").read_text(encoding="utf-8")
    return json.loads(text)


def words(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text`` (the unit the synthetic oracle counts in)."""
    return _WORD.findall(text.lower())


def prompt_keywords(prompt: str) -> frozenset[str]:
    """Content words of a prompt (its topic for default prompts): words minus template/function words."""
    return frozenset(w for w in words(prompt) if w not in _STOP)


@lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[str, ...]]:
    spec = task_spec()
    combos = [t.format(topic=topic) for topic in spec["topics"] for t in spec["prompt_templates"]]
    order = list(range(len(combos)))
    random.Random(_SPLIT_SEED).shuffle(order)
    n_eval = round(EVAL_FRACTION * len(combos))
    eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])
    return {"train": tuple(combos[i] for i in train_idx), "eval": tuple(combos[i] for i in eval_idx)}


def default_prompts(split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of the embedded default task.

    ``split`` is ``"train"`` or ``"eval"`` (fixed and disjoint). ``n=None`` returns the whole split in its
    canonical order; otherwise a seeded random subset of ``n`` prompts (without replacement, kept in
    canonical order), so the same ``(split, n, seed)`` always gives the same prompts.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = list(_splits()[split])
    if n is None:
        return pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if n > len(pool):
        raise ValueError(f"n={n} exceeds the {len(pool)} prompts of the default {split!r} split")
    keep = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [pool[i] for i in keep]


def load_prompts(path: str | os.PathLike, *, tokenizer=None) -> list:
    """Prompts from a local file: ``.txt`` (one per non-empty line) or ``.jsonl`` in TRL's formats.

    A JSONL record gives its ``"prompt"`` (a string, or a conversation: a list of ``{"role", "content"}``
    messages with any system turns and earlier turns), or -- a preference dataset's row -- the prompt shared by
    its ``"chosen"`` / ``"rejected"`` (explicit or implicit), or a ``"messages"`` conversation without its final
    assistant turn(s). Raises FileNotFoundError for a missing file and ValueError naming the file and line for
    malformed content (bad JSON, no usable prompt, no prompts at all). With ``tokenizer``, each prompt is also encoded
    (:func:`inpo.data.chat.encode_prompt`): a chat template that fails on it, or a conversation under plain text, is
    a ValueError naming the file and line too.
    """
    path = check_input_file(path, "prompts file", "a .txt or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise ValueError(f"prompts file {str(path)!r}: unsupported extension {suffix!r}; use .txt or .jsonl")
    prompts: list = []
    wheres: list[str] = []
    for lineno, line in enumerate(read_utf8(path, what="prompts file").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        wheres.append(f"{path}:{lineno}")
        prompt = line if suffix == ".txt" else _jsonl_prompt(line, wheres[-1])
        prompts.append(prompt.strip() if isinstance(prompt, str) else prompt)
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} contains no prompts")
    for prompt, where in zip(prompts, wheres if tokenizer is not None else []):
        encode_prompt(tokenizer, prompt, where=where)  # a failing template, a conversation under plain text
    return prompts


def _jsonl_prompt(line: str, where: str):
    """The prompt of one JSONL record in any of the formats :func:`load_prompts` reads."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
    if "prompt" in record and not ("chosen" in record and "rejected" in record):
        return check_prompt(record["prompt"], f"{where}: 'prompt'")
    if "chosen" in record and "rejected" in record:
        return normalize_pair(record, where)["prompt"]
    if "messages" in record:
        msgs = check_prompt(record["messages"], f"{where}: 'messages'")
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise ValueError(f"{where}: 'messages' has no turn before the assistant's")
        return msgs
    raise ValueError(f"{where}: record has no 'prompt' field (nor 'chosen'/'rejected' or 'messages'; "
                     f"keys: {sorted(record)})")


def split_prompts(pool: list, split: str, *, eval_fraction: float = EVAL_FRACTION) -> list:
    """A user's prompt pool split once and for all into disjoint ``train`` / ``eval`` parts, as the default task's.

    The split depends only on the pool (a fixed seed, never the run's), so training and every later evaluation
    (``inpo eval`` on the run's model included) agree on which prompts were held out. ``eval`` takes
    ``round(eval_fraction * n)`` prompts, at least 1; a pool of one prompt cannot be split (ValueError).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = len(pool)
    if n < 2:
        raise ValueError(f"cannot hold out evaluation prompts from {n} prompt(s): give at least 2, or an "
                         f"eval_prompts file")
    n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    order = list(range(n))
    random.Random(_SPLIT_SEED).shuffle(order)
    keep = sorted(order[:n_eval]) if split == "eval" else sorted(order[n_eval:])
    return [pool[i] for i in keep]


def _topic_of(prompt: str, topics: list[str]) -> str:
    kws = prompt_keywords(prompt)
    for topic in topics:
        if topic in kws:
            return topic
    raise ValueError(f"not a default-task prompt (no known topic): {prompt!r}")


def _style_pair(rng: random.Random, styles: dict[str, list[str]]) -> tuple[str, str]:
    """Two style adjectives: usually from one family (a clear style class), sometimes mixed."""
    families = sorted(styles)
    fam = rng.choice(families)
    a = rng.choice(styles[fam])
    if rng.random() < 0.1:  # mixed: one word each from two families -> no dominant style
        other = rng.choice([f for f in families if f != fam])
        return a, rng.choice(styles[other])
    return a, rng.choice([w for w in styles[fam] if w != a])


def _response(topic: str, rng: random.Random) -> str:
    spec = task_spec()
    flaws = {name for name, rate in _FLAW_RATES.items() if rng.random() < rate}
    if "short" in flaws and "long" in flaws:
        flaws.discard(rng.choice(["short", "long"]))
    if "off_topic" in flaws:
        topic = rng.choice([t for t in spec["topics"] if t != topic])
    a, b = _style_pair(rng, spec["styles"])
    fill = {"topic": topic, "a": a, "b": b, "n": rng.choice(spec["neutral_adjectives"]),
            "time": rng.choice(spec["times"])}
    if "short" in flaws:
        text = rng.choice(spec["short_templates"]).format(**fill)
    else:
        text = rng.choice(spec["response_templates"]).format(**fill)
        if "long" in flaws:  # run-on: glue a second clause on, well past the length band
            more = rng.choice(spec["response_templates"]).format(
                **{**fill, "n": rng.choice(spec["neutral_adjectives"]), "time": rng.choice(spec["times"])})
            text = text[:-1] + ", and " + more[0].lower() + more[1:]
    text = text[0].upper() + text[1:]
    if "repeat" in flaws:
        toks = text[:-1].split()
        i = rng.randrange(len(toks))
        toks[i:i + 1] = [toks[i]] * rng.randint(2, 4)
        text = " ".join(toks) + text[-1]
    if "no_end" in flaws:  # stops mid-sentence: drop the punctuation and maybe the last word
        toks = text[:-1].split()
        if len(toks) > 3 and rng.random() < 0.5:
            toks = toks[:-1]
        text = " ".join(toks).rstrip(",")
    return text


def sft_examples(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, response)`` demonstrations on the default *train* prompts, for the SFT warm start.

    ``n=None`` gives three demonstrations per train prompt. Deterministic for ``(n, seed)``.
    """
    train = default_prompts("train")
    if n is None:
        n = 3 * len(train)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    rng = random.Random(seed)
    topics = task_spec()["topics"]
    out: list[tuple[str, str]] = []
    while len(out) < n:  # cycle through shuffled prompts so every prompt is covered evenly
        order = list(train)
        rng.shuffle(order)
        for prompt in order[: n - len(out)]:
            out.append((prompt, _response(_topic_of(prompt, topics), rng)))
    return out


def real_prompts_path() -> Path:
    """``inpo/assets/real_prompts.txt``: 237 instruction prompts written for this project (science, history, how-to,
    cooking, writing, emails, lists, comparisons, definitions, arithmetic, code, advice, rewriting, nature,
    technology, opinions), one per line, for runs on real chat models (``make train-real``). No dataset was copied."""
    return Path(str(resources.files("inpo").joinpath("assets/real_prompts.txt")))

