"""The pure-torch chunked head never allocates [N, V]: its largest tensor stays bounded as V grows.

CPU: a TorchDispatchMode records every tensor ATen produces during forward + backward (the largest one is the
peak single allocation); the naive head, run under the same recorder, proves the recorder sees [N, V].
GPU: ``torch.cuda.max_memory_allocated`` growth.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from inpo.ops import sequence_logps
from inpo.ops.torch_impl import _TILE_ELEMS
from tests.helpers import make_problem


class LargestTensor(TorchDispatchMode):
    """Largest numel among all tensors returned by ATen ops while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_fwd_bwd(impl, n, h, v, **kw):
    prob = make_problem(lengths=[n // 4] * 4, h=h, v=v, seed=0)
    hidden = prob["hidden"].requires_grad_(True)
    weight = prob["weight"].requires_grad_(True)
    with LargestTensor() as rec:
        if impl == "torch-small-chunks":
            from inpo.ops import torch_impl

            out = torch_impl.sequence_logps(hidden, weight, prob["labels"], prob["cu_seqlens"], **kw)
        else:
            out = sequence_logps(hidden, weight, prob["labels"], prob["cu_seqlens"], impl=impl)
        out.sum().backward()
    return rec.largest


def test_recorder_sees_naive_logits():
    n, h, v = 64, 8, 3000
    assert _largest_fwd_bwd("naive", n, h, v) >= n * v


@pytest.mark.parametrize("v", [8000, 24000])
def test_chunked_torch_head_peak_tensor_is_independent_of_n_times_v(v):
    n, h = 512, 8
    kw = dict(chunk_tokens=128, chunk_vocab=2000)
    largest = _largest_fwd_bwd("torch-small-chunks", n, h, v, **kw)
    # One [chunk_tokens, chunk_vocab] tile, or the O(V·H) / O(N·H) inputs and fp32 accumulators.
    assert largest <= max(128 * 2000, v * h, n * h), largest
    assert largest < n * v / 4


def test_default_chunks_respect_tile_budget_as_v_grows():
    """Default chunking: N·V beyond the CPU tile budget still allocates at most one budget-sized tile."""
    n, h = 2048, 4
    budget = _TILE_ELEMS["cpu"]
    for v in (8192, 12000):  # N·V = 16.8 Mi and 24.6 Mi elements, over the 8 Mi budget
        largest = _largest_fwd_bwd("torch", n, h, v)
        assert n * v > budget
        assert largest <= max(budget, v * h, n * h), (v, largest)


@pytest.mark.gpu
def test_chunked_torch_head_cuda_peak_memory():
    n, h, v = 4096, 256, 64000
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    cu = torch.tensor([0, n // 2, n], dtype=torch.int32, device="cuda")
    from inpo.ops import torch_impl

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = torch_impl.sequence_logps(hidden, weight, labels, cu, chunk_tokens=512, chunk_vocab=8192)
    out.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    tile = 512 * 8192 * 4
    budget = 6 * tile + 6 * v * h + 6 * n * h + (32 << 20)  # a few live tiles + fp32 accumulators + grads
    assert extra < budget < n * v * 4, (extra, budget)
