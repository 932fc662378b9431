"""crossent.linear_distillation_loss and linear_topk_distillation_loss against the torch
compositions (TRL's formulas on materialised logits) and the float64 reference, on every path:
value and gradients no worse than torch's, every option, small sizes and sizes where the fused
kernels run several chunks. (Triton: tests/backends/triton/test_triton_distillation.py; the
interpreter is too slow for the whole grid.)"""

from __future__ import annotations

import pytest
import torch
from distill_helpers import (
    BACKENDS,
    backend_fixture,
    check_dense,
    check_topk,
    dense_problem,
    leaves,
    topk_problem,
)

import crossent
from conftest import assert_close


@pytest.fixture(params=BACKENDS)
def backend(request):
    yield from backend_fixture(request)


CAPS = {"no caps": {}, "both caps": {"softcap": 2.5, "teacher_softcap": 4.0}}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("hard_weight", [0.0, 0.6], ids=["soft", "soft+hard"])
@pytest.mark.parametrize("caps", CAPS, ids=CAPS)
@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0], ids=["fwdKL", "JSD", "revKL"])
def test_dense_grid(backend, beta, temperature, caps, hard_weight, reduction):
    """beta x T x softcaps x hard_weight x reductions; D_t != D, a quarter of the rows ignored,
    chunks of 5 rows (three chunks, the last short)."""
    check_dense(dense_problem(), torch.float32, beta=beta, temperature=temperature, hard_weight=hard_weight,
                reduction=reduction, chunk_size=5, **CAPS[caps])


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_dense_at_a_size_where_the_default_chunks_run(backend, beta):
    """N=300, V=6000: the default rule's chunks (16 MiB budget: ~90 rows), soft + hard, float64
    tight and float32 no worse than torch."""
    if backend in ("composite", "reference"):
        pytest.skip("the chunk rule is the fused kernels'")
    problem = dense_problem(300, 16, 24, 6000, seed=3)
    check_dense(problem, torch.float32, beta=beta, temperature=1.5, hard_weight=0.5, softcap=20.0)
    check_dense(problem, torch.float64, beta=beta, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dense_dtypes(backend, dtype):
    check_dense(dense_problem(seed=4), dtype, beta=0.5, temperature=2.0, hard_weight=0.3, chunk_size=4)


def test_dense_normalizer_target_none_and_weights(backend):
    problem = dense_problem(seed=5)
    check_dense(problem, torch.float32, normalizer=7.0, hard_weight=0.5, soft_weight=2.0, chunk_size=5)
    check_dense(problem, torch.float32, normalizer=torch.tensor(3.0), beta=1.0)
    x, w, b, xt, wt, bt, _ = problem
    check_dense((x, w, b, xt, wt, bt, None), torch.float32, beta=0.0, reduction="mean")
    check_dense(problem, torch.float32, hard_weight=1.0, soft_weight=0.0, temperature=3.0)


def test_soft_weight_zero_is_the_linear_cross_entropy(backend):
    x, w, b, xt, wt, bt, t = dense_problem(seed=6)
    ours = crossent.linear_distillation_loss(x, w, xt, wt, linear_bias=b, target=t, soft_weight=0.0, hard_weight=2.0,
                                             softcap=3.0)
    ce = crossent.linear_cross_entropy(x, w, t, linear_bias=b, softcap=3.0)
    assert_close(ours, 2.0 * ce)


def test_every_row_ignored_gives_nan_mean_and_zero_gradients(backend):
    x, w, b, xt, wt, bt, t = dense_problem(seed=7)
    (xs,) = leaves(x)
    loss = crossent.linear_distillation_loss(xs, w, xt, wt, target=torch.full_like(t, -100), hard_weight=1.0)
    assert torch.isnan(loss)
    (g,) = torch.autograd.grad(loss, xs)
    assert torch.equal(g, torch.zeros_like(g))
    none = crossent.linear_distillation_loss(xs, w, xt, wt, target=torch.full_like(t, -100), reduction="none")
    assert torch.equal(none, torch.zeros_like(none))


def test_masked_teacher_classes_add_nothing(backend):
    """A class the teacher masks with a -inf logit: q = 0 there, its terms are 0 (0 log 0) in
    KL(q || p) and in the mixture, where TRL's F.kl_div gives nan; the student's gradient is
    finite. Reverse KL (beta = 1) is +inf there (p > 0 where q = 0), as the formula says."""
    x, w, b, xt, wt, bt, t = dense_problem(seed=8)
    bt = bt.clone()
    bt[[3, 11]] = float("-inf")
    for beta in (0.0, 0.5, 1.0):
        (xs,) = leaves(x)
        loss = crossent.linear_distillation_loss(xs, w, xt, wt, linear_bias=b, teacher_linear_bias=bt, beta=beta)
        expected = crossent.reference.linear_distillation_loss(x.double(), w.double(), xt.double(), wt.double(),
                                                               b.double(), bt.double(), beta=beta)
        if beta == 1.0:
            assert loss == float("inf") and expected == float("inf")
            continue
        assert torch.isfinite(loss) and torch.isfinite(expected)
        assert_close(loss, expected, torch.float32)
        (g,) = torch.autograd.grad(loss, xs)
        (g_ref,) = torch.autograd.grad(crossent.reference.linear_distillation_loss(
            xs.double(), w.double(), xt.double(), wt.double(), b.double(), bt.double(), beta=beta), xs)
        assert torch.isfinite(g).all()
        assert_close(g, g_ref, torch.float32)


def test_the_teacher_is_a_constant_and_nothing_is_modified(backend):
    x, w, b, xt, wt, bt, t = dense_problem(seed=9)
    xs, ws, xts, wts, bts = leaves(x, w, xt, wt, bt)
    before = [a.detach().clone() for a in (xs, ws, xts, wts, bts)]
    versions = [a._version for a in (xs, ws, xts, wts, bts)]
    loss = crossent.linear_distillation_loss(xs, ws, xts, wts, teacher_linear_bias=bts, target=t, hard_weight=0.5)
    grads = torch.autograd.grad(loss, (xs, ws, xts, wts, bts), allow_unused=True)
    assert grads[0] is not None and grads[1] is not None
    assert all(g is None for g in grads[2:])
    for a, old, version in zip((xs, ws, xts, wts, bts), before, versions):
        assert torch.equal(a, old) and a._version == version


def test_deterministic_and_repeatable_backward(backend):
    x, w, b, xt, wt, bt, t = dense_problem(40, 8, 12, 300, seed=10)
    runs = []
    for _ in range(2):
        xs, ws = leaves(x, w)
        loss = crossent.linear_distillation_loss(xs, ws, xt, wt, target=t, hard_weight=0.5, chunk_size=16)
        loss.backward(retain_graph=True)
        first = (xs.grad.clone(), ws.grad.clone())
        xs.grad, ws.grad = None, None
        loss.backward()  # a second backward through the same graph: the same bits
        assert torch.equal(first[0], xs.grad) and torch.equal(first[1], ws.grad)
        runs.append((loss.detach(), *first))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)


# ---------------------------------------------------------------- top-k

TEACHERS = {
    "diffuse": dict(concentrated=False),
    "concentrated": dict(concentrated=True),
    "both peaked": dict(concentrated=True, student_peaked=True),
}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("tail", [True, False], ids=["tail", "renormalised"])
@pytest.mark.parametrize("teacher", TEACHERS, ids=TEACHERS)
@pytest.mark.parametrize("k", [1, 4, 64])
def test_topk_grid(backend, k, teacher, tail, reduction):
    """k x a teacher whose top-k holds almost all mass or little (and a student whose own top-k
    mass is nearly 1: p_tail is summed, not 1 - sum p) x tail on/off; padded and empty rows;
    chunks of 4 rows, T = 1.5, a softcap."""
    problem = topk_problem(k=k, **TEACHERS[teacher])
    check_topk(problem, torch.float32, tail=tail, reduction=reduction, temperature=1.5, softcap=8.0, chunk_size=4)


def test_topk_float64_sum_normalizer_and_default_chunks(backend):
    check_topk(topk_problem(k=8, seed=2), torch.float64, reduction="sum")
    check_topk(topk_problem(k=8, seed=3), torch.float32, normalizer=5.0)
    check_topk(topk_problem(200, 16, 5000, k=16, seed=4, concentrated=True), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_topk_16bit(backend, dtype):
    check_topk(topk_problem(k=4, seed=5), dtype, tail=True, chunk_size=4)


def test_topk_tail_when_the_student_tail_is_tiny(backend):
    """The student's mass outside the teacher's ids is ~e^-40: p_tail from 1 - sum p would be 0
    (loss inf or the -1e-7 clamp); summed over the rest it is exact."""
    x, w, b, ids, log_q = topk_problem(k=4, seed=6, concentrated=True, ignored=False, dtype=torch.float64)
    b = b.scatter_add(0, ids.reshape(-1), torch.full((ids.numel(),), 40.0, dtype=b.dtype))
    ours = crossent.linear_topk_distillation_loss(x.double(), w.double(), ids, log_q.double(),
                                                  linear_bias=b.double(), reduction="none")
    ref = crossent.reference.linear_topk_distillation_loss(x.double(), w.double(), ids, log_q.double(), b.double(),
                                                           reduction="none")
    assert torch.isfinite(ours).all()
    assert_close(ours, ref)


def test_topk_with_every_class_in_the_support(backend):
    """k = V: nothing outside the support; the tail is the teacher's missing mass alone."""
    x, w, b, ids, log_q = topk_problem(6, 4, 7, k=7, seed=7, ignored=False)
    check_topk((x, w, b, ids, log_q), torch.float64, tail=False)
    check_topk((x, w, b, ids, log_q), torch.float64, tail=True)  # q_tail ~ 0 (rounding): clamped
    # the teacher's mass sums to 0.99: q_tail > 0 where p_tail = 0, an infinite divergence
    loss = crossent.linear_topk_distillation_loss(x, w, ids, log_q - 0.01, linear_bias=b, reduction="none")
    assert torch.isinf(loss).all() and (loss > 0).all()
