"""Shared test helpers: per-dtype tolerances and the "no worse than torch" comparison."""

from __future__ import annotations

import os

# Without a GPU, the Triton backend's kernels run on CPU tensors through Triton's interpreter
# (read by Triton when a kernel is first defined: set before any test runs one).
if not os.environ.get("TRITON_INTERPRET"):
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

from crossent import Backend

# Absolute/relative tolerances per dtype, for values and gradients.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-6, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None):
    dtype = dtype or actual.dtype
    torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True, **TOL[dtype])


def assert_no_worse_than_torch(ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor, dtype):
    """|ours - ref64| <= |torch - ref64| + atol + rtol * |ref64|, elementwise (CCE's criterion)."""
    ours, theirs, ref64 = ours.double(), theirs.double(), ref64.double()
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(ours), nan), "nan pattern differs from the reference"
    tol = TOL[dtype]
    bound = (theirs - ref64).abs() + tol["atol"] + tol["rtol"] * ref64.abs()
    err = (ours - ref64).abs()
    bad = (err > bound) & ~nan
    assert not bad.any(), f"max excess {(err - bound)[bad].max().item():.3e} over {bad.sum().item()} elements"


def free_port() -> int:
    """A free TCP port on the loopback, for a process group's rendezvous in distributed tests."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


# The parity grids run whole on crossent's fused kernels and on the float64 reference; the other
# paths (auto, which sends these small problems to torch's own kernels, torch, composite, Triton)
# run a pairwise design of (path x options) together: every value of every option on every one
# of those paths, and every pair of option values that occurs in the grid on at least one of them
# (`pairwise`). CROSSENT_FULL_GRID=1 runs every grid whole on every path.
FULL_GRID = (Backend.FUSED.value, Backend.REFERENCE.value)
SAMPLED = ("auto", *(b.value for b in Backend if b.value not in FULL_GRID))
EVERY_CASE = os.environ.get("CROSSENT_FULL_GRID", "") not in ("", "0")


def sampled(every, default):
    """`default` (a representative part of `every`), or `every` under CROSSENT_FULL_GRID=1: for
    the expensive cases (trainings, model builds) that repeat a contract another test checks on
    every case."""
    return list(every) if EVERY_CASE else list(default)


def pairwise(cases):
    """Indices of a subset of `cases` (equal-length tuples of hashable option values) in which
    every value, and every pair of values at two positions that occurs together in some case,
    occurs again: greedy, each step taking the case that covers most of what is not covered yet,
    ties broken by a hash of the case (deterministic, and not biased to the grid's first values)."""
    import itertools
    import zlib

    def pairs(case):
        return {(i, case[i], j, case[j]) for i, j in itertools.combinations(range(len(case)), 2)} | {
            (i, case[i]) for i in range(len(case))}

    covers = [pairs(c) for c in cases]
    todo = set().union(*covers) if covers else set()
    if not todo:  # no options (a test parametrized by the path alone): it runs
        return list(range(len(cases)))
    order = sorted(range(len(cases)), key=lambda k: zlib.crc32(repr(cases[k]).encode()))
    chosen = []
    while todo:
        best = max(order, key=lambda k: len(covers[k] & todo))
        chosen.append(best)
        todo -= covers[best]
    return sorted(chosen)


def _backend_of(item):
    spec = getattr(item, "callspec", None)
    backend = spec.params.get("on_backend", "auto") if spec is not None else "auto"
    return getattr(backend, "value", backend) or "auto"


def pytest_collection_modifyitems(config, items):
    if EVERY_CASE:
        return
    named = {arg.split("::", 1)[-1] for arg in config.args if "[" in arg}  # cases asked for by id run
    groups = {}  # test -> its items on the sampled paths: the grid they share a design of
    for item in items:
        spec = getattr(item, "callspec", None)
        if item.nodeid.split("::", 1)[-1] in named:
            continue
        if spec is not None and "on_backend" in spec.params and _backend_of(item) in SAMPLED:
            groups.setdefault(item.nodeid.split("[")[0], []).append(item)
    drop = set()
    for group in groups.values():
        cases = [(_backend_of(it), *(repr(v) for k, v in sorted(it.callspec.params.items()) if k != "on_backend"))
                 for it in group]
        keep = set(pairwise(cases))
        drop.update(id(it) for k, it in enumerate(group) if k not in keep)
    if drop:
        config.hook.pytest_deselected(items=[it for it in items if id(it) in drop])
        items[:] = [it for it in items if id(it) not in drop]


@pytest.fixture(params=[None, *Backend], ids=["auto", *(b.value for b in Backend)])
def on_backend(request):
    """Run a parity test on every path the dispatch can take (auto = the documented rule): whole
    grids on fused and reference, a pairwise design on the others (see FULL_GRID)."""
    import crossent

    if request.param is None:
        yield None
        return
    if request.param is Backend.TRITON:
        from crossent.backends.triton import ops

        if not ops.importable():
            pytest.skip("Triton is not installed (pip install 'crossent[triton]')")
    with crossent.use_backend(request.param):
        yield request.param


@pytest.fixture
def small_blocks(monkeypatch):
    """The Triton kernel's two-pass loop (rows over SINGLE_BLOCK_MAX classes) at interpreter-sized
    shapes: rows longer than 32 classes take it, in blocks of 16 (16-bit) to 4 (float64) classes,
    on a persistent grid of 2 programs that stream several rows each."""
    from crossent.backends.triton import ops, schedule

    monkeypatch.setattr(ops, "SINGLE_BLOCK_MAX", 32)
    monkeypatch.setattr(ops, "LOOP_BLOCK", 16)
    monkeypatch.setattr(schedule, "MAX_PROGRAMS", 2)


def skip_without_triton():
    """At the top of a Triton test module: skip it where Triton is not installed."""
    from crossent.backends.triton import ops

    if not ops.importable():
        pytest.skip("Triton is not installed (pip install 'crossent[triton]')", allow_module_level=True)


def fsdp2_runs_on_cpu() -> bool:
    """Whether this torch's FSDP2 runs on CPU: torch 2.6's does not (its forward hook records an
    event on the device's stream, and 2.6's torch.cpu.Stream has no record_event: AttributeError
    inside torch), 2.11's does. Its CPU tests can then only run on a GPU machine."""
    return hasattr(torch.cpu.Stream, "record_event")


FSDP2_CPU_REASON = "this torch's FSDP2 cannot run on CPU (torch.cpu.Stream has no record_event: torch 2.6)"


def skip_without_fsdp2():
    """At the top of an FSDP2 test module: skip it where torch has no fully_shard, no gloo, or an
    FSDP2 that cannot run on CPU."""
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard", allow_module_level=True)
    if not fsdp2_runs_on_cpu():
        pytest.skip(FSDP2_CPU_REASON, allow_module_level=True)
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def skip_if_products_depend_on_threads(m: int, k: int, n: int):
    """Skip a test of thread-count independence where the BLAS library itself gives a different
    (m, k) @ (k, n) float32 product at one and two threads: MKL on AVX-512 CPUs splits a long inner
    dimension across threads (seen on an Intel Xeon from k ~ 1000 at m = 24..64, n = 16), and
    crossent's linear losses multiply with torch's products, as F.linear does."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(k, m, generator=gen).t(), torch.randn(k, n, generator=gen)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(torch.mm(a, b))
    finally:
        torch.set_num_threads(threads)
    if not torch.equal(*outs):
        pytest.skip(f"this BLAS's ({m}, {k}) @ ({k}, {n}) product depends on the thread count")
