"""The distillation losses on the Triton kernels (kernels_distill.py, launched by ops_distill.py
under the fused chunk loop) through the interpreter at small shapes, against the float64
reference and the torch composition: value and the student's gradients, no worse than torch.
``small_blocks``: rows longer than one block (16 classes), so the kernels' loops over a row's
blocks run."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import check_dense, check_topk, dense_problem, topk_problem

import crossent
from conftest import skip_without_triton

skip_without_triton()


@pytest.fixture(autouse=True)
def _triton_path():
    with crossent.use_backend(crossent.Backend.TRITON):
        yield


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0], ids=["fwdKL", "JSD", "revKL"])
def test_dense_every_option(small_blocks, beta):
    """T = 2, both softcaps, soft + hard, ignored rows, D_t != D, chunks of 5 (the last short)."""
    problem = dense_problem(13, 8, 12, 37, seed=30)
    check_dense(problem, torch.float32, beta=beta, temperature=2.0, softcap=2.5, teacher_softcap=4.0,
                hard_weight=0.6, chunk_size=5)
    check_dense(problem, torch.float32, beta=beta, reduction="none", chunk_size=4)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dense_soft_alone_hard_alone_and_normalizer(reduction):
    """(one block per row: V = 29)"""
    problem = dense_problem(9, 6, 10, 29, seed=31)
    check_dense(problem, torch.float32, beta=0.3, reduction=reduction, soft_weight=2.0, chunk_size=4)
    check_dense(problem, torch.float32, hard_weight=1.0, soft_weight=0.0, temperature=3.0, reduction=reduction)
    check_dense(problem, torch.float32, beta=0.7, normalizer=5.0, hard_weight=0.2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dense_dtypes(small_blocks, dtype):
    check_dense(dense_problem(9, 6, 10, 45, seed=32), dtype, beta=0.5, temperature=1.5, hard_weight=0.3,
                chunk_size=4)


def test_dense_masked_teacher_classes():
    x, w, b, xt, wt, bt, t = dense_problem(9, 6, 10, 29, seed=33)
    bt = bt.clone()
    bt[[2, 20]] = float("-inf")
    for beta in (0.0, 0.5):
        check_dense((x, w, b, xt, wt, bt, t), torch.float64, beta=beta, chunk_size=4)


TEACHERS = {"diffuse": dict(concentrated=False), "concentrated": dict(concentrated=True),
            "both peaked": dict(concentrated=True, student_peaked=True)}


@pytest.mark.parametrize("tail", [True, False], ids=["tail", "renormalised"])
@pytest.mark.parametrize("k,teacher", [(1, "diffuse"), (4, "concentrated"), (4, "both peaked"), (64, "diffuse")],
                         ids=["k1-diffuse", "k4-concentrated", "k4-both peaked", "k64-diffuse"])
def test_topk(small_blocks, k, teacher, tail):
    """Padded and empty rows, T = 1.5, a softcap, chunks of 4."""
    problem = topk_problem(10, 8, 100, k=k, seed=34, **TEACHERS[teacher])
    check_topk(problem, torch.float32, tail=tail, temperature=1.5, softcap=8.0, chunk_size=4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_topk_dtypes_and_reductions(small_blocks, dtype):
    problem = topk_problem(10, 8, 50, k=5, seed=35)
    check_topk(problem, dtype, tail=True, reduction="none", chunk_size=3)
    check_topk(problem, dtype, tail=False, reduction="sum")
    check_topk(problem, dtype, normalizer=4.0)


def test_topk_with_every_class_in_the_support():
    """(one block per row: V = 7)"""
    x, w, b, ids, log_q = topk_problem(6, 4, 7, k=7, seed=36, ignored=False)
    check_topk((x, w, b, ids, log_q), torch.float64, tail=True)
    check_topk((x, w, b, ids, log_q), torch.float64, tail=False)
