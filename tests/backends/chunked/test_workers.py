"""backends/chunked/workers.py: chunks on single-threaded workers give the serial loop's results
bitwise, leave the caller's thread settings alone, and survive errors, nesting, concurrent callers
and fork."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import crossent
from crossent.backends.chunked import workers

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _pool_in_use() -> bool:
    seen = workers.map_chunks(lambda i, s: threading.current_thread().name, [0, 1], CPU)
    return all(name.startswith("crossent-chunks") for name in seen)


def test_results_come_in_item_order_with_one_scratch_per_worker(two_threads):
    items = list(range(50))
    scratches = []

    def fn(i, scratch):
        scratch.setdefault("id", object())
        scratches.append(scratch["id"])
        return i * i

    assert workers.map_chunks(fn, items, CPU) == [i * i for i in items]
    assert 1 <= len(set(map(id, scratches))) <= 2


def test_workers_run_one_thread_without_autograd_and_the_caller_keeps_its_settings(two_threads):
    if not _pool_in_use():
        pytest.skip("no OpenMP runtime found: the chunks run in the calling thread")
    seen = workers.map_chunks(lambda i, s: (torch.get_num_threads(), torch.is_grad_enabled()), list(range(8)), CPU)
    assert set(seen) == {(1, False)}
    assert torch.get_num_threads() == 2 and torch.is_grad_enabled()
    # a thread started now still gets the process default, not the workers' 1
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [2]


def test_an_error_in_a_chunk_reaches_the_caller(two_threads):
    def fn(i, scratch):
        if i == 5:
            raise ValueError("chunk 5")
        return i

    with pytest.raises(ValueError, match="chunk 5"):
        workers.map_chunks(fn, list(range(10)), CPU)
    assert workers.map_chunks(lambda i, s: i, [1, 2, 3], CPU) == [1, 2, 3]  # the pool still works


def test_one_thread_one_item_and_nested_calls_run_in_the_calling_thread(two_threads):
    me = threading.current_thread().name
    assert workers.map_chunks(lambda i, s: threading.current_thread().name, [0], CPU) == [me]
    torch.set_num_threads(1)
    assert workers.map_chunks(lambda i, s: threading.current_thread().name, [0, 1], CPU) == [me, me]
    torch.set_num_threads(2)
    inner = workers.map_chunks(
        lambda i, s: {threading.current_thread().name == n
                      for n in workers.map_chunks(lambda j, s2: threading.current_thread().name, [0, 1], CPU)},
        [0, 1], CPU)
    assert inner == [{True}, {True}]


def _on_one_and_two_threads(loss_fn, x):
    """(loss, gradient) of loss_fn(x) on the fused backend with 1 and with 2 intra-op threads."""
    out = {}
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xx = x.clone().requires_grad_()
            with crossent.use_backend("fused"):
                loss = loss_fn(xx)
            loss.sum().backward()
            out[threads] = (loss.detach(), xx.grad)
    finally:
        torch.set_num_threads(old)
    return out[1], out[2]


@pytest.mark.parametrize("shape,reduction,extra", [
    ((3000, 1000), "mean", {}),
    ((2000, 1500), "none", {"label_smoothing": 0.1}),
    ((6, 7, 100, 600), "sum", {}),
    ((5, 21, 90, 700), "mean", {"softcap": 5.0, "label_smoothing": 0.1, "ignore_index": 2}),
    ((1500, 2000), "mean", {"ignore_index": 3}),
])
def test_cross_entropy_is_bitwise_the_same_on_one_thread_and_on_the_workers(shape, reduction, extra):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen)
    one, two = _on_one_and_two_threads(lambda xx: crossent.cross_entropy(xx, t, reduction=reduction, **extra), x)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_binary_losses_are_bitwise_the_same_on_one_thread_and_on_the_workers():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 1500, generator=gen)
    y = torch.rand(3000, 1500, generator=gen)
    one, two = _on_one_and_two_threads(lambda xx: crossent.binary_cross_entropy_with_logits(xx, y), x)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_serial_caller_runs_the_callers_ops_on_one_thread_and_the_chunks_on_the_workers(two_threads):
    if not _pool_in_use():
        pytest.skip("no OpenMP runtime found: the chunks run in the calling thread")
    with workers.serial_caller():
        assert torch.get_num_threads() == 1
        with workers.serial_caller():  # nested: still one thread, and the outer block restores
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
        assert _pool_in_use()  # the caller's 2 workers, not 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"):
        with workers.serial_caller():
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with workers.serial_caller():  # one thread: nothing to change
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1


def test_a_fused_cross_entropy_runs_its_per_sample_ops_on_one_thread(two_threads, monkeypatch):
    """Beside the chunks (on the workers) the call's ops run on one thread in the caller, which
    gets its thread count back."""
    if not _pool_in_use():
        pytest.skip("no OpenMP runtime found: the chunks run in the calling thread")
    from crossent.backends import rows
    from crossent.backends.chunked import kernel

    monkeypatch.setattr(workers, "contended", lambda: True)  # (few chunks: the workers when contended)
    seen = {"targets": [], "chunks": []}
    real_targets, real_chunk = rows.targets, kernel.ce_chunk
    monkeypatch.setattr(rows, "targets", lambda *a, **k: (seen["targets"].append(
        (threading.current_thread().name, torch.get_num_threads())), real_targets(*a, **k))[1])
    monkeypatch.setattr(kernel, "ce_chunk", lambda *a, **k: (seen["chunks"].append(
        threading.current_thread().name), real_chunk(*a, **k))[1])
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 21, 64, 512, generator=gen, requires_grad=True)
    t = torch.randint(0, 21, (4, 64, 512), generator=gen)
    with crossent.use_backend("fused"):
        loss = crossent.cross_entropy(x, t)
    loss.backward()
    assert seen["targets"] == [(threading.current_thread().name, 1)]
    assert len(seen["chunks"]) > 1 and all(n.startswith("crossent-chunks") for n in seen["chunks"])
    assert torch.get_num_threads() == 2
    xr = x.detach().clone().requires_grad_()
    want = torch.nn.functional.cross_entropy(xr, t)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(x.grad, xr.grad)


def test_finding_torchs_openmp_runtime_leaves_the_callers_count_alone(two_threads, monkeypatch):
    monkeypatch.setattr(workers, "_omp_checked", False)
    monkeypatch.setattr(workers, "_omp_set_num_threads", None)
    workers._resolve_omp()
    assert torch.get_num_threads() == 2
    if "OpenMP" in torch.__config__.parallel_info():
        assert workers._omp_set_num_threads is not None


def test_concurrent_callers_each_get_their_own_result(two_threads):
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(2000, 1000, generator=gen) for _ in range(4)]
    t = torch.randint(0, 1000, (2000,), generator=gen)
    got = [None] * 4

    def call(i):
        with crossent.use_backend("fused"):  # (per thread: a new thread starts unforced)
            got[i] = crossent.cross_entropy(xs[i], t)

    with crossent.use_backend("fused"):
        expected = [crossent.cross_entropy(x, t) for x in xs]
    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_computes_after_the_parent_used_the_workers():
    # (the workers forced: 3 chunks on a quiet CPU would run in the calling thread, on an OpenMP
    # team of 2, after which GNU OpenMP cannot start a team in a forked child -- as after any
    # parallel torch op; torch's DataLoader gives its workers one thread for that reason)
    code = """
import os, torch, crossent
from crossent.backends.chunked import workers
workers.contended = lambda: True
torch.set_num_threads(2)
x = torch.randn(3000, 1000); t = torch.randint(0, 1000, (3000,))
with crossent.use_backend("fused"):
    a = crossent.cross_entropy(x, t)
pid = os.fork()
if pid == 0:
    with crossent.use_backend("fused"):
        b = crossent.cross_entropy(x, t)
    os._exit(0 if torch.equal(a, b) else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", code], timeout=120, env=os.environ)
    assert done.returncode == 0


def test_inference_mode_reaches_the_workers(two_threads):
    x = torch.randn(3000, 1000)
    t = torch.randint(0, 1000, (3000,))
    with torch.inference_mode():
        out = torch.zeros(10)

        def fill(i, scratch):
            out[i] = float(i)  # an in-place update of an inference tensor: only in inference mode

        workers.map_chunks(fill, list(range(10)), CPU)
        with crossent.use_backend("fused"):
            got = crossent.cross_entropy(x, t, reduction="none")
    assert torch.equal(out, torch.arange(10.0))
    with crossent.use_backend("fused"):
        assert torch.equal(got, crossent.cross_entropy(x, t, reduction="none"))


def test_a_dispatch_mode_sees_every_op_of_the_loss(two_threads):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    x = torch.randn(3000, 1000)
    t = torch.randint(0, 1000, (3000,))
    names = []
    with Count() as mode:
        names = workers.map_chunks(lambda i, s: threading.current_thread().name, [0, 1], CPU)
        with crossent.use_backend("fused"):
            crossent.cross_entropy(x, t)
    assert set(names) == {threading.current_thread().name}
    assert mode.ops > 3 * 5  # the chunks' ops ran where the mode is (3 chunks, ~5 ops each)


# ---------------------------------------------------------------- few chunks on a quiet CPU


def test_few_chunks_on_a_quiet_cpu_run_in_the_calling_thread_with_all_its_threads(two_threads, monkeypatch):
    """Below min_items and not contended: the calling thread, with the caller's threads also inside
    serial_caller (which leaves the caller one for its own ops); contended: the workers."""
    if not _pool_in_use():
        pytest.skip("no OpenMP runtime found: the chunks run in the calling thread")
    me = threading.current_thread().name
    probe = lambda i, s: (threading.current_thread().name, torch.get_num_threads())
    monkeypatch.setattr(workers, "contended", lambda: False)
    assert workers.map_chunks(probe, [0, 1, 2], CPU, min_items=4) == [(me, 2)] * 3
    with workers.serial_caller():
        assert torch.get_num_threads() == 1
        assert workers.map_chunks(probe, [0, 1, 2], CPU, min_items=4) == [(me, 2)] * 3
        assert torch.get_num_threads() == 1  # the caller's own ops stay on one thread
        assert all(n.startswith("crossent-chunks") and k == 1
                   for n, k in workers.map_chunks(probe, [0, 1, 2, 3], CPU, min_items=4))
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(workers, "contended", lambda: True)
    assert all(n.startswith("crossent-chunks") for n, _ in workers.map_chunks(probe, [0, 1, 2], CPU, min_items=4))


def test_contended_is_the_share_of_time_waiting_for_a_core_since_the_last_look(monkeypatch):
    waited, clock = [0], [100.0]
    monkeypatch.setattr(workers, "_run_queue_wait_ns", lambda: waited[0])
    monkeypatch.setattr(workers.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(workers, "_last_look", threading.local())
    share = workers.BUSY_WAIT_SHARE
    assert workers.contended() is False  # a thread's first look: quiet
    for seconds, wait_share, busy in [(1.0, share / 2, False), (2.0, share * 3, True), (0.5, share * 0.8, False)]:
        clock[0] += seconds
        waited[0] += int(seconds * wait_share * 1e9)
        assert workers.contended() is busy, (seconds, wait_share)
    monkeypatch.setattr(workers, "_run_queue_wait_ns", lambda: None)
    assert workers.contended() is True  # no count: the workers


def test_the_run_queue_wait_is_read_where_linux_has_it():
    got = workers._run_queue_wait_ns()
    if not os.path.exists(workers._SCHEDSTAT):
        assert got is None
    else:
        assert isinstance(got, int) and got >= 0


def test_the_kernel_gives_the_same_bits_in_the_calling_thread_and_on_the_workers(two_threads, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 1000, generator=gen)  # 3 chunks of 1M elements
    t = torch.randint(0, 1000, (3000,), generator=gen)
    out = {}
    for busy in (False, True):
        monkeypatch.setattr(workers, "contended", lambda b=busy: b)
        xr = x.clone().requires_grad_()
        loss = crossent.cross_entropy(xr, t)
        loss.backward()
        out[busy] = (loss, xr.grad)
    assert torch.equal(out[False][0], out[True][0]) and torch.equal(out[False][1], out[True][1])
