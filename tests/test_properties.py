"""Property-based tests (hypothesis): invariants of the cross-entropy family, on crossent's own
kernels (forced: these shapes are small enough that the rule would run torch's kernel), each
property on the fused torch-op kernel and on the composite formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import crossent
from crossent import reference

settings.register_profile("crossent", max_examples=60, deadline=None)
settings.load_profile("crossent")

KERNELS = pytest.mark.parametrize("backend", ["fused", "composite"])


@st.composite
def problems(draw):
    n = draw(st.integers(0, 9))
    c = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 300.0]))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


@KERNELS
@given(problems(), st.floats(0, 1), st.sampled_from(["mean", "sum", "none"]))
def test_matches_reference_for_any_scale(backend, problem, eps, reduction):
    x, t = problem
    with crossent.use_backend(backend):
        ours = crossent.cross_entropy(x, t, label_smoothing=eps, reduction=reduction)
    ref = reference.cross_entropy(x, t, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9, equal_nan=True)


@KERNELS
@given(problems(), st.floats(-50, 50))
def test_invariant_to_adding_a_constant_to_the_logits(backend, problem, shift):
    x, t = problem
    with crossent.use_backend(backend):
        a = crossent.cross_entropy(x, t, reduction="none")
        b = crossent.cross_entropy(x + shift, t, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@KERNELS
@given(problems())
def test_loss_is_nonnegative_and_gradient_rows_sum_to_zero(backend, problem):
    x, t = problem
    x = x.clone().requires_grad_()
    with crossent.use_backend(backend):
        loss = crossent.cross_entropy(x, t, reduction="sum", label_smoothing=0.1)
    assert (loss >= 0).all()
    if x.numel():
        (g,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(g.sum(1), torch.zeros(x.shape[0], dtype=x.dtype), atol=1e-9, rtol=0)


@KERNELS
@given(problems())
def test_uniform_logits_give_log_c(backend, problem):
    x, t = problem
    if x.shape[0] == 0:
        return
    with crossent.use_backend(backend):
        loss = crossent.cross_entropy(torch.zeros_like(x), t)
    assert math.isclose(loss.item(), math.log(x.shape[1]), rel_tol=1e-12, abs_tol=1e-12)


@KERNELS
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 6))
def test_bce_with_logits_equals_bce_of_sigmoid_away_from_saturation(backend, seed, n, c):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(n, c, generator=gen, dtype=torch.float64)
    with crossent.use_backend(backend):
        a = crossent.binary_cross_entropy_with_logits(x, y)
        b = crossent.binary_cross_entropy(torch.sigmoid(x), y)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@KERNELS
@given(problems())
def test_never_mutates_inputs(backend, problem):
    x, t = problem
    x0, t0 = x.clone(), t.clone()
    x.requires_grad_()  # the very tensors passed to crossent are the ones checked
    versions = (x._version, t._version)
    with crossent.use_backend(backend):
        crossent.cross_entropy(x, t, label_smoothing=0.2, z_loss=1e-3).backward()
    assert (x._version, t._version) == versions
    assert torch.equal(x.detach(), x0) and torch.equal(t, t0)


@given(st.integers(0, 2**31 - 1), st.sampled_from([1.0, 1e2, 1e4]))
def test_large_common_offsets_lose_nothing(seed, offset):
    """Logits near a large common offset (1e4 in float32: its ulp is 1e-3): the loss is computed
    relative to the row max, so it is as exact as torch's log_softmax, on the fused kernel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 300, generator=gen) + offset
    t = torch.randint(0, 300, (64,), generator=gen)
    with crossent.use_backend("fused"):
        ours = crossent.cross_entropy(x, t, reduction="none")
    ref = reference.cross_entropy(x.double(), t, reduction="none")
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=2e-6)
