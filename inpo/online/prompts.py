"""The prompts a run samples on: the training pool (a fresh subset per iteration with ``n_prompts``), the held-out
pool of the evaluation, and the check that a prompt plus its responses fits the token budget."""

from __future__ import annotations

import random

from inpo.data.chat import encode_prompt, prompt_key, prompt_text
from inpo.data.prompts import default_prompts, load_prompts, split_prompts
from inpo.train.config import TrainConfig


def prompt_pools(cfg: TrainConfig, tokenizer=None) -> tuple[list, list]:
    """(train, eval) prompt pools. ``prompts: default`` → the embedded task's fixed splits; a user's prompts
    file → its own fixed held-out split (:func:`~inpo.data.prompts.split_prompts`), disjoint from training,
    unless ``eval_prompts`` names a file (then all of ``prompts`` trains). With ``tokenizer``, every prompt of a
    file is encoded once: a template or format error names file:line."""
    if cfg.prompts == "default":
        train = default_prompts("train")
        held_out = default_prompts("eval")
    else:
        pool = load_prompts(cfg.prompts, tokenizer=tokenizer)
        if cfg.eval_prompts == "default":  # whether or not this run evaluates: the same training prompts
            train, held_out = split_prompts(pool, "train"), split_prompts(pool, "eval")
        else:
            train, held_out = pool, []
    if cfg.eval_prompts != "default":
        held_out = load_prompts(cfg.eval_prompts, tokenizer=tokenizer)
    return train, held_out


def prompt_set(cfg: TrainConfig, iteration: int) -> list:
    """Iteration ``iteration``'s training prompts: the whole pool, or a fresh subset of ``n_prompts`` each
    iteration (the paper uses disjoint prompt splits per iteration)."""
    pool = prompt_pools(cfg)[0]
    if cfg.n_prompts is None or cfg.n_prompts >= len(pool):
        return pool
    keep = sorted(random.Random(cfg.seed * 1009 + iteration).sample(range(len(pool)), cfg.n_prompts))
    return [pool[i] for i in keep]


def eval_prompts(cfg: TrainConfig) -> list:
    pool = prompt_pools(cfg)[1]
    return pool if cfg.n_eval is None else pool[: cfg.n_eval]


def encode_checked(tokenizer, prompts: list, cfg: TrainConfig) -> dict[str, list[int]]:
    """Prompt ids (cut to max_prompt_length) by :func:`~inpo.data.chat.prompt_key`, with a clear error when a
    prompt plus its longest response cannot fit the token budget."""
    trunc = cfg.truncation()
    out = {}
    for p in prompts:
        key = prompt_key(p)
        if key in out:
            continue
        ids = trunc.prompt(encode_prompt(tokenizer, p))
        # +2: the template's end of turn (and ChatML's newline after it) follow the sampled tokens
        seq = len(ids) + cfg.max_new_tokens + 2
        need = 2 * (seq if cfg.max_length is None else min(seq, cfg.max_length))
        if need > cfg.max_tokens:
            raise ValueError(f"prompt {prompt_text(p)[:60]!r} has {len(ids)} tokens: a pair of it with two "
                             f"{cfg.max_new_tokens}-token responses needs {need} > max_tokens={cfg.max_tokens}; raise "
                             f"max_tokens, or shorten the prompt (max_prompt_length)")
        out[key] = ids
    return out
