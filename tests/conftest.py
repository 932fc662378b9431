"""Shared test helpers: per-dtype tolerances and the "no worse than torch" comparison."""

from __future__ import annotations

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


@pytest.fixture(params=[None, *Backend], ids=["auto", *(b.value for b in Backend)])
def on_backend(request):
    """Run a parity test on every path the dispatch can take (auto = the documented rule)."""
    import crossent

    if request.param is None:
        yield None
        return
    with crossent.use_backend(request.param):
        yield request.param
