"""backends/_memory: the large CPU buffers are reused only when nothing references them, and the
numbers are never stale (each step's gradient equals torch's whatever the buffer held before)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent.backends import _memory

N, C = 2048, 1100  # 9 MB of float32 logits: above the cache's 8 MB floor, runs the fused kernel


@pytest.fixture(autouse=True)
def fresh_cache():
    crossent.empty_cache()
    yield
    crossent.empty_cache()


def _step(seed, keep=None):
    """One loss step on fresh logits; returns (grad, expected grad)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=gen).requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    crossent.cross_entropy(x, t).backward()
    expected = torch.autograd.grad(F.cross_entropy(x, t), x)[0]
    return x.grad, expected


def test_a_released_gradient_buffer_is_reused_and_rewritten():
    g1, e1 = _step(1)
    torch.testing.assert_close(g1, e1)
    ptr = g1.data_ptr()
    del g1
    g2, e2 = _step(2)  # different logits: every element must be rewritten
    assert g2.data_ptr() == ptr
    torch.testing.assert_close(g2, e2)


@pytest.mark.parametrize("holder", ["grad", "view", "numpy", "storage"])
def test_a_buffer_still_referenced_is_never_handed_out(holder):
    g1, e1 = _step(1)
    kept = {"grad": lambda g: g, "view": lambda g: g[5:7], "numpy": lambda g: g.numpy(),
            "storage": lambda g: g.untyped_storage()}[holder](g1)
    snapshot = g1.clone()
    ptr = g1.data_ptr()
    del g1
    g2, e2 = _step(2)
    assert g2.data_ptr() != ptr
    torch.testing.assert_close(g2, e2)
    if holder == "numpy":
        assert np.array_equal(kept, snapshot.numpy())
    elif holder != "storage":
        torch.testing.assert_close(kept, snapshot[5:7] if holder == "view" else snapshot, rtol=0, atol=0)


def test_retained_graph_is_not_overwritten_by_another_call():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, generator=gen).requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    loss = crossent.cross_entropy(x, t)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    first = first.clone()
    del_me, e2 = _step(2)  # another call while the retained graph holds the first gradient
    torch.testing.assert_close(del_me, e2)
    (again,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_concurrent_requests_get_distinct_buffers():
    held, barrier = [], threading.Barrier(4)

    def take():
        barrier.wait()
        for _ in range(50):
            t = _memory.empty((N, C), torch.float32, torch.device("cpu"))
            t.fill_(threading.get_ident() % 1000)
            held.append((t.data_ptr(), t))  # every one stays referenced
    threads = [threading.Thread(target=take) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({p for p, _ in held}) == len(held)


def test_small_requests_and_other_devices_are_not_cached():
    _memory.empty((100, 100), torch.float32, torch.device("cpu"))
    assert _memory.cached_bytes() == 0


def test_the_cache_is_bounded_and_evicts_only_free_buffers():
    shapes = [(N + i, C) for i in range(_memory.MAX_CACHED + 2)]
    held = [_memory.empty(s, torch.float32, "cpu") for s in shapes]  # all in use
    assert len(_memory._cache) == _memory.MAX_CACHED  # the extra ones were not cached
    cached = {c.cdata for c in _memory._cache}
    del held
    t = _memory.empty((N + 99, C), torch.float32, "cpu")  # evicts the least recently used free one
    assert len(_memory._cache) == _memory.MAX_CACHED
    assert len(cached & {c.cdata for c in _memory._cache}) == _memory.MAX_CACHED - 1
    del t


def test_empty_cache_gives_the_memory_back_and_sizes_and_dtypes_must_match():
    a = _memory.empty((N, C), torch.float32, "cpu")
    ptr = a.data_ptr()
    del a
    b = _memory.empty((N, C), torch.bfloat16, "cpu")  # half the bytes: a new buffer
    assert b.data_ptr() != ptr
    c = _memory.empty((C, N), torch.float32, "cpu")  # same bytes, another shape: reused, contiguous
    assert c.data_ptr() == ptr and c.shape == (C, N) and c.is_contiguous() and c.dtype == torch.float32
    del b, c
    assert _memory.cached_bytes() > 0
    crossent.empty_cache()
    assert _memory.cached_bytes() == 0


def test_disabled_cache_allocates_fresh(monkeypatch):
    monkeypatch.setattr(_memory, "_ENABLED", False)
    a = _memory.empty((N, C), torch.float32, "cpu")
    assert _memory.cached_bytes() == 0 and a.shape == (N, C)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_reused_buffers_across_dtypes_give_torch_gradients(dtype):
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(N, C, generator=gen, dtype=dtype).requires_grad_()
        t = torch.randint(0, C, (N,), generator=gen)
        (g,) = torch.autograd.grad(crossent.cross_entropy(x, t), x)
        (e,) = torch.autograd.grad(F.cross_entropy(x.double(), t), x)
        torch.testing.assert_close(g.double(), e.double(), **({"rtol": 2e-2, "atol": 1e-4} if dtype == torch.bfloat16 else {}))
