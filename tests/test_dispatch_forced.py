"""_dispatch.use_backend: a block forces the calls of its own thread or asyncio task only, nested
blocks restore the outer backend (exceptions included), no dispatch decision is made on a chunk
worker, and torch.compile traces the forced rule without a graph break, recompiling when the
block changes."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

import crossent
from crossent import _dispatch, _forced, _to_torch, functional
from crossent.backends.chunked import kernel

F = torch.nn.functional
FUSED_SIZE = (64, 20000)  # above every CPU threshold: the unforced rule picks 'fused'


def _ran(monkeypatch):
    """Record (thread name, backend) for every cross_entropy a backend runs."""
    seen = []
    lock = threading.Lock()
    for b in crossent.Backend:
        module = _dispatch.backend(b)
        for name in ("cross_entropy", "cross_entropy_unchecked"):
            real = getattr(module, name, None)
            if real is None:
                continue

            def wrapped(*a, _r=real, _b=b.value, **k):
                with lock:
                    seen.append((threading.current_thread().name, _b))
                return _r(*a, **k)

            monkeypatch.setattr(module, name, wrapped)
    real_kernel = _to_torch._ce_kernel  # the commonest small call's kernel, called by the rule itself

    def kernel_wrapped(*a):
        with lock:
            seen.append((threading.current_thread().name, "torch"))
        return real_kernel(*a)

    monkeypatch.setattr(_to_torch, "_ce_kernel", kernel_wrapped)
    monkeypatch.setattr(functional, "_ce_kernel", kernel_wrapped)
    return seen


def _call(shape=(16, 10)):
    x = torch.randn(*shape, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0],))
    return crossent.cross_entropy(x, t), F.cross_entropy(x, t)


def test_concurrent_threads_each_see_their_own_backend(monkeypatch):
    seen = _ran(monkeypatch)
    inside = threading.Barrier(4)
    forced, errors = {}, []

    def run(name):
        try:
            with crossent.use_backend(name) if name != "unforced" else _forced.block(None):
                inside.wait(timeout=30)  # every thread inside its block before any call
                for _ in range(3):
                    ours, theirs = _call()
                    torch.testing.assert_close(ours, theirs)
                forced[name] = _dispatch.forced()
                inside.wait(timeout=30)  # and none leaves before all have called
        except Exception as e:  # noqa: BLE001 (reported below, with the thread)
            errors.append((name, e))

    names = ["fused", "composite", "reference", "unforced"]
    threads = [threading.Thread(target=run, args=(n,), name=n) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert forced == {"fused": crossent.Backend.FUSED, "composite": crossent.Backend.COMPOSITE,
                      "reference": crossent.Backend.REFERENCE, "unforced": None}
    by_thread = {n: {b for t, b in seen if t == n} for n in names}
    assert by_thread == {"fused": {"fused"}, "composite": {"composite"}, "reference": {"reference"},
                         "unforced": {"torch"}}  # (16 x 10, unforced: torch's kernel)
    assert _forced.active == () and _dispatch.forced() is None


def test_a_thread_started_inside_a_block_runs_unforced(monkeypatch):
    seen = _ran(monkeypatch)
    with crossent.use_backend("reference"):
        th = threading.Thread(target=_call, name="child")
        th.start()
        th.join()
        _call()
    assert [b for t, b in seen if t == "child"] == ["torch"]
    assert [b for t, b in seen if t != "child"] == ["reference"]


def test_nested_blocks_restore_the_outer_backend_also_after_an_exception(monkeypatch):
    seen = _ran(monkeypatch)
    with crossent.use_backend("composite"):
        with pytest.raises(RuntimeError, match="inside"):
            with crossent.use_backend("reference"):
                _call()
                assert _dispatch.forced() is crossent.Backend.REFERENCE
                raise RuntimeError("inside")
        assert _dispatch.forced() is crossent.Backend.COMPOSITE
        _call()
        with crossent.use_backend("fused"):
            _call()
        _call()
    assert _dispatch.forced() is None and _forced.active == ()
    _call()
    assert [b for _, b in seen] == ["reference", "composite", "fused", "composite", "torch"]


def test_an_unknown_backend_forces_nothing():
    with pytest.raises(ValueError, match="nonsense"):
        with crossent.use_backend("nonsense"):
            pass
    assert _forced.active == () and _dispatch.forced() is None


def test_asyncio_tasks_each_see_their_own_backend(monkeypatch):
    seen = _ran(monkeypatch)

    async def task(name, results):
        with crossent.use_backend(name):
            await asyncio.sleep(0.01)  # the other task enters its block meanwhile
            results[name] = _dispatch.forced()
            _call()
            await asyncio.sleep(0.01)
            assert _dispatch.forced() is crossent.Backend(name)

    async def main():
        results = {}
        await asyncio.gather(task("composite", results), task("reference", results))
        return results

    assert asyncio.run(main()) == {"composite": crossent.Backend.COMPOSITE, "reference": crossent.Backend.REFERENCE}
    assert sorted(b for _, b in seen) == ["composite", "reference"]


def test_no_dispatch_decision_is_made_on_a_chunk_worker(monkeypatch):
    """The workers run row kernels only: the rule (and the forced backend it reads) runs in the
    caller's thread, before the chunks are handed out."""
    from crossent.backends.chunked import workers

    monkeypatch.setattr(workers, "contended", lambda: True)  # (2 chunks: the workers when contended)
    rule_threads, chunk_threads = [], []
    for name in ("forced", "_choose", "fused_for"):
        real = getattr(_dispatch, name)
        monkeypatch.setattr(_dispatch, name,
                            lambda *a, _r=real, **k: (rule_threads.append(threading.current_thread().name), _r(*a, **k))[1])
    real_chunk = kernel.ce_chunk
    monkeypatch.setattr(kernel, "ce_chunk",
                        lambda *a, **k: (chunk_threads.append(threading.current_thread().name), real_chunk(*a, **k))[1])
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with crossent.use_backend("fused"):
            ours, theirs = _call(FUSED_SIZE)
        ours.backward()
        unforced, _ = _call(FUSED_SIZE)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(ours, theirs)
    assert chunk_threads and all(n.startswith("crossent-chunks") for n in chunk_threads), chunk_threads
    assert rule_threads and not any(n.startswith("crossent-chunks") for n in rule_threads), rule_threads


@pytest.mark.slow
def test_compile_traces_the_forced_rule_without_a_graph_break_and_retraces_per_block():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(tuple(str(n.target) for n in gm.graph.nodes if n.op == "call_function"))
        return gm

    f = torch.compile(lambda x, t: crossent.cross_entropy(x, t), fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, 10, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    outs = [f(x, t)]  # unforced, small: torch's kernel
    with crossent.use_backend("reference"):
        outs.append(f(x, t))
    outs.append(f(x, t))  # unforced again: the first graph, no new trace
    with crossent.use_backend("composite"):
        outs.append(f(x, t))
    with crossent.use_backend("reference"):
        outs.append(f(x, t))  # the reference graph again
    with crossent.use_backend("composite"), crossent.use_backend("reference"):
        outs.append(f(x, t))  # nested: the innermost block decides (a new set of blocks: a new trace)
    expected = F.cross_entropy(x, t)
    for out in outs:
        torch.testing.assert_close(out, expected)
    assert len(graphs) == 4
    torch_graph, reference_graph, composite_graph, nested_graph = graphs
    assert any("cross_entropy" in op for op in torch_graph)
    assert not any("cross_entropy" in op for op in reference_graph + composite_graph)
    assert reference_graph != composite_graph and nested_graph == reference_graph
