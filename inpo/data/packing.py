"""Pack (prompt, response) sequences into micro-batches by a token budget.

A micro-batch is one row of concatenated sequences (``input_ids [1, N]``), no padding. Position ids
restart at 0 for every sequence, which is how transformers' sdpa/eager (with ``use_cache=False``) and
flash-attn varlen paths keep attention inside each document; ``cu_seqlens`` gives the fused head the
sequence boundaries. Labels are already shifted: ``labels[j]`` is the token at ``j+1`` when that token
belongs to the response of the same sequence, else -100 -- so prompt tokens and the step across a
sequence boundary never count.

Pairwise packing keeps pair ``i`` (sequences ``2i`` chosen, ``2i+1`` rejected) in one micro-batch and
adjacent, which is the layout the objectives in :mod:`inpo.objectives` expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100

__all__ = ["PackedBatch", "pack_sequences", "IGNORE_INDEX"]


@dataclass
class PackedBatch:
    """One packed micro-batch. ``seq_ids[s]`` indexes the dataset's sequence list, so per-sequence side
    inputs (π_ref / π_t log-probs, SPPO targets) are gathered as ``side[batch.seq_ids]``."""

    input_ids: Tensor  # [1, N] int64
    position_ids: Tensor  # [1, N] int64, restart at 0 per sequence
    labels: Tensor  # [N] int64, shifted, IGNORE_INDEX on prompt tokens and each sequence's last token
    cu_seqlens: Tensor  # [S+1] int32
    seq_ids: Tensor  # [S] int64
    n_tokens: int
    n_pairs: int  # pairs (pairwise) -- 0 when packed per sequence
    pairwise: bool = True

    @property
    def n_units(self) -> int:
        """Loss-averaging units: pairs for pairwise objectives, sequences otherwise."""
        return self.n_pairs if self.pairwise else int(self.seq_ids.numel())

    def to(self, device: torch.device | str) -> "PackedBatch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.position_ids), move(self.labels), move(self.cu_seqlens),
                           self.seq_ids, self.n_tokens, self.n_pairs, self.pairwise)


def _check_sequence(i: int, seq) -> tuple[list[int], list[int]]:
    if not (isinstance(seq, (tuple, list)) and len(seq) == 2):
        raise TypeError(f"seqs[{i}] must be a (prompt_ids, response_ids) pair of int lists, got {type(seq).__name__}")
    prompt, response = list(seq[0]), list(seq[1])
    if len(prompt) == 0:
        raise ValueError(f"seqs[{i}] has an empty prompt: the first response token needs a context (at least a bos)")
    if len(response) == 0:
        raise ValueError(f"seqs[{i}] has an empty response: nothing to score (responses should end with eos)")
    return prompt, response


def _build(units: list[list[int]], seqs: list[tuple[list[int], list[int]]], pairwise: bool) -> PackedBatch:
    ids, pos, labels, cu, seq_ids = [], [], [], [0], []
    for unit in units:
        for s in unit:
            prompt, response = seqs[s]
            tokens = prompt + response
            ids += tokens
            pos += range(len(tokens))
            # labels[j] = tokens[j+1] for response tokens; the prompt's targets and the last token's are ignored.
            labels += [IGNORE_INDEX] * (len(prompt) - 1) + response + [IGNORE_INDEX]
            cu.append(cu[-1] + len(tokens))
            seq_ids.append(s)
    n = len(ids)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long).view(1, n),
        position_ids=torch.tensor(pos, dtype=torch.long).view(1, n),
        labels=torch.tensor(labels, dtype=torch.long),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        seq_ids=torch.tensor(seq_ids, dtype=torch.long),
        n_tokens=n,
        n_pairs=len(units) if pairwise else 0,
        pairwise=pairwise,
    )


def pack_sequences(seqs: list[tuple[list[int], list[int]]], *, max_tokens: int, pairwise: bool = True,
                   order: list[int] | None = None) -> list[PackedBatch]:
    """Greedily pack sequences, in order, into micro-batches of at most ``max_tokens`` tokens.

    Args:
        seqs: ``(prompt_ids, response_ids)`` per sequence; with ``pairwise`` sequences ``2i``/``2i+1`` are
            pair ``i``'s chosen/rejected and always land in the same micro-batch, adjacent.
        max_tokens: token budget of one micro-batch (prompt + response tokens of all its sequences).
        pairwise: pack pairs (``True``) or single sequences (SPPO).
        order: optional permutation of the units (pairs or sequences) to pack in, e.g. an epoch's shuffle.

    Raises:
        ValueError: when one pair (or sequence) alone exceeds ``max_tokens`` -- it names the unit and its size.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    seqs = [_check_sequence(i, s) for i, s in enumerate(seqs)]
    if pairwise and len(seqs) % 2:
        raise ValueError(f"pairwise packing needs an even number of sequences (2i chosen, 2i+1 rejected), got {len(seqs)}")
    width = 2 if pairwise else 1
    n_units = len(seqs) // width
    if order is None:
        order = list(range(n_units))
    elif sorted(order) != list(range(n_units)):
        raise ValueError(f"order must be a permutation of range({n_units}), got {len(order)} entries")
    batches, current, current_tokens = [], [], 0
    for u in order:
        unit = list(range(u * width, u * width + width))
        size = sum(len(seqs[s][0]) + len(seqs[s][1]) for s in unit)
        if size > max_tokens:
            what = f"pair {u} (sequences {unit[0]}, {unit[1]})" if pairwise else f"sequence {u}"
            raise ValueError(
                f"{what} has {size} tokens (prompt + response), more than max_tokens={max_tokens}; raise "
                f"max_tokens or truncate (max_length, max_prompt_length) / shorten responses (max_new_tokens)"
            )
        if current and current_tokens + size > max_tokens:
            batches.append(_build(current, seqs, pairwise))
            current, current_tokens = [], 0
        current.append(unit)
        current_tokens += size
    if current:
        batches.append(_build(current, seqs, pairwise))
    return batches
