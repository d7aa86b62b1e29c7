"""Packing: token budget, pairs never split, labels/positions/cu_seqlens right, packed == unpacked."""

import pytest
import torch

from inpo.data.packing import IGNORE_INDEX, pack_sequences


def _seqs(n, seed=0, vocab=50):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lp, lr = torch.randint(1, 8, (2,), generator=g).tolist()
        out.append((torch.randint(3, vocab, (lp,), generator=g).tolist(), torch.randint(3, vocab, (lr,), generator=g).tolist()))
    return out


def test_layout_of_one_batch():
    seqs = [([1, 5, 6], [7, 8, 2]), ([1, 9], [2])]
    (b,) = pack_sequences(seqs, max_tokens=100)
    assert b.input_ids.tolist() == [[1, 5, 6, 7, 8, 2, 1, 9, 2]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2]]
    i = IGNORE_INDEX
    # labels[j] = token j+1 when it is a response token of the same sequence
    assert b.labels.tolist() == [i, i, 7, 8, 2, i, i, 2, i]
    assert b.cu_seqlens.tolist() == [0, 6, 9] and b.cu_seqlens.dtype == torch.int32
    assert b.seq_ids.tolist() == [0, 1] and b.n_pairs == 1 and b.n_tokens == 9 and b.n_units == 1


@pytest.mark.parametrize("max_tokens", [30, 47, 64, 1000])
def test_budget_respected_and_pairs_never_split(max_tokens):
    seqs = _seqs(40)
    batches = pack_sequences(seqs, max_tokens=max_tokens)
    seen = []
    for b in batches:
        assert b.n_tokens <= max_tokens and b.n_tokens == b.input_ids.shape[1]
        ids = b.seq_ids.tolist()
        assert len(ids) % 2 == 0
        for c, r in zip(ids[0::2], ids[1::2]):
            assert c % 2 == 0 and r == c + 1  # chosen/rejected adjacent, in order
        seen += ids
    assert sorted(seen) == list(range(40))
    # greedy: a batch is closed only when the next pair would not fit
    for b, nxt in zip(batches, batches[1:]):
        first = nxt.seq_ids[:2].tolist()
        assert b.n_tokens + sum(len(seqs[s][0]) + len(seqs[s][1]) for s in first) > max_tokens


def test_order_and_unpaired_packing():
    seqs = _seqs(6)
    batches = pack_sequences(seqs, max_tokens=1000, pairwise=False, order=[5, 0, 3, 1, 2, 4])
    assert batches[0].seq_ids.tolist() == [5, 0, 3, 1, 2, 4] and batches[0].n_units == 6 and batches[0].n_pairs == 0
    with pytest.raises(ValueError, match="permutation"):
        pack_sequences(seqs, max_tokens=1000, pairwise=False, order=[0, 0, 1, 2, 3, 4])


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match=r"pair 1 \(sequences 2, 3\) has 14 tokens.*max_tokens=10"):
        pack_sequences([([1], [2])] * 2 + [([1] * 5, [2, 2])] * 2, max_tokens=10)
    with pytest.raises(ValueError, match="even number"):
        pack_sequences(_seqs(3), max_tokens=100)
    with pytest.raises(ValueError, match="empty response"):
        pack_sequences([([1], []), ([1], [2])], max_tokens=100)
    with pytest.raises(ValueError, match="max_tokens"):
        pack_sequences(_seqs(2), max_tokens=0)


def test_packed_equals_unpacked_logits_and_logps():
    from transformers import LlamaConfig, LlamaForCausalLM

    from inpo.ops import sequence_logps
    from inpo.train.model import hidden_and_head

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    seqs = _seqs(6, seed=3)
    (packed,) = pack_sequences(seqs, max_tokens=1000)
    hidden, weight, _, _, _ = head = hidden_and_head(model, packed.input_ids, packed.position_ids)
    logps = sequence_logps(hidden, weight, packed.labels, packed.cu_seqlens, impl="torch", **head.kwargs())
    cu = packed.cu_seqlens.tolist()
    for s, (p, r) in enumerate(seqs):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0]
        torch.testing.assert_close(hidden[cu[s]:cu[s + 1]] @ weight.t(), logits, atol=1e-5, rtol=1e-5)
        lp = torch.log_softmax(logits.double(), -1)[len(p) - 1:-1].gather(1, torch.tensor(r)[:, None]).sum()
        assert abs(logps[s].item() - lp.item()) < 1e-4
