"""crossent's distillation losses against TRL's own functions (TRL 1.16, imported from the
installed package, not rewritten): the DistillationTrainer's chunked divergence
(``trl.trainer.distillation_trainer._chunked_divergence_loss``), GKD's
``GKDTrainer.generalized_jsd_loss`` on materialised logits, and the server distillation's
top-k forward KL (``ServerDistillationTrainer._compute_server_forward_kl_loss``, tail bucket on
and off). Values and the student's gradients (input, weight, bias) on every backend."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from distill_helpers import BACKENDS, backend_fixture, dense_problem, grad_out, leaves, topk_problem

import crossent
from conftest import assert_close, assert_no_worse_than_torch

pytest.importorskip("trl")
distillation_trainer = pytest.importorskip("trl.trainer.distillation_trainer")
gkd_trainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
server = pytest.importorskip("trl.experimental.server_distillation.server_distillation_trainer")


@pytest.fixture(params=BACKENDS)
def backend(request):
    yield from backend_fixture(request)


def _ours(x, w, b, xt, wt, bt, target, **kw):
    return crossent.linear_distillation_loss(x, w, xt, wt, linear_bias=b, teacher_linear_bias=bt, target=target, **kw)


def _student_grads(loss, leaves_, go=None):
    return torch.autograd.grad(loss, leaves_, go if go is not None else torch.ones_like(loss))


CAPS = {"no caps": (None, None), "caps": (2.5, 4.0)}


@pytest.mark.parametrize("normalizer", [None, 11.0], ids=["mean", "num_items_in_batch"])
@pytest.mark.parametrize("caps", CAPS, ids=CAPS)
@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0], ids=["fwdKL", "JSD", "revKL"])
def test_dense_equals_trl_chunked_divergence(backend, beta, temperature, caps, normalizer):
    """TRL's DistillationTrainer loss (its chunked kernel, float32 tiles) on (B, K, H) hidden
    states with a completion mask = crossent's on the flattened rows with target = -100 where
    the mask is 0; D_t != D. Both within float32 rounding of the float64 reference."""
    softcap, teacher_softcap = CAPS[caps]
    x, w, b, xt, wt, bt, t = dense_problem(12, 8, 12, 37, seed=11)
    mask = (t != -100).reshape(3, 4)
    kw = dict(beta=beta, temperature=temperature, softcap=softcap, teacher_softcap=teacher_softcap)
    xs, ws, bs = leaves(x, w, b)
    ours = _ours(xs, ws, bs, xt, wt, bt, t, normalizer=normalizer, chunk_size=5, **kw)
    xr, wr, br = leaves(x, w, b)
    theirs, _, n_valid = distillation_trainer._chunked_divergence_loss(
        xr.reshape(3, 4, -1), xt.reshape(3, 4, -1), wr, wt, mask.long(), beta, num_items_in_batch=normalizer,
        student_lm_head_bias=br, teacher_lm_head_bias=bt, student_final_logit_softcapping=softcap,
        teacher_final_logit_softcapping=teacher_softcap, temperature=temperature)
    assert int(n_valid) == int(mask.sum())
    x64, w64, b64 = leaves(x.double(), w.double(), b.double())
    ref = crossent.reference.linear_distillation_loss(x64, w64, xt.double(), wt.double(), b64, bt.double(), t,
                                                      normalizer=normalizer, **kw)
    assert_close(ours, theirs, torch.float32)
    assert_no_worse_than_torch(ours, theirs, ref, torch.float32)
    for g, gt, gr in zip(_student_grads(ours, (xs, ws, bs)), _student_grads(theirs, (xr, wr, br)),
                         _student_grads(ref, (x64, w64, b64))):
        assert_close(g, gt, torch.float32)
        assert_no_worse_than_torch(g, gt, gr, torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("temperature", [1.0, 3.0], ids=["T1", "T3"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_dense_equals_gkd_generalized_jsd_in_float64(backend, beta, temperature, reduction):
    """GKD's generalized_jsd_loss (F.kl_div on the materialised logits, labels -100 ignored,
    'batchmean' = crossent's 'mean') in float64: equal to rounding, value and gradients."""
    x, w, b, xt, wt, bt, t = dense_problem(12, 8, 12, 37, dtype=torch.float64, seed=12)
    xs, ws, bs = leaves(x, w, b)
    ours = _ours(xs, ws, bs, xt, wt, bt, t, beta=beta, temperature=temperature, reduction=reduction, chunk_size=5)
    xr, wr, br = leaves(x, w, b)
    student = F.linear(xr, wr, br).reshape(3, 4, -1)
    teacher = F.linear(xt, wt, bt).reshape(3, 4, -1)
    theirs = gkd_trainer.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=t.reshape(3, 4), beta=beta, temperature=temperature,
        reduction="batchmean" if reduction == "mean" else "sum")
    assert_close(ours, theirs)
    for g, gt in zip(_student_grads(ours, (xs, ws, bs)), _student_grads(theirs, (xr, wr, br))):
        assert_close(g, gt)


def test_dense_gkd_with_num_items_in_batch(backend):
    x, w, b, xt, wt, bt, t = dense_problem(12, 8, 12, 37, dtype=torch.float64, seed=13)
    xs, ws = leaves(x, w)
    ours = _ours(xs, ws, b, xt, wt, bt, t, beta=0.3, temperature=1.5, normalizer=torch.tensor(17.0))
    xr, wr = leaves(x, w)
    theirs = gkd_trainer.GKDTrainer.generalized_jsd_loss(
        F.linear(xr, wr, b)[None], F.linear(xt, wt, bt)[None], labels=t[None], beta=0.3, temperature=1.5,
        num_items_in_batch=torch.tensor(17.0))
    assert_close(ours, theirs)
    for g, gt in zip(_student_grads(ours, (xs, ws)), _student_grads(theirs, (xr, wr))):
        assert_close(g, gt)


# ---------------------------------------------------------------- top-k (the server path)


def _trl_server_topk(x, w, b, ids, log_q, *, temperature, tail, ignore_index=-100):
    """TRL's ServerDistillationTrainer forward KL on the teacher's top-k (beta = 0): the
    student's log_softmax at the temperature, the teacher's padding as -inf log-probs, rows
    with no id masked through labels = -100, 'batchmean'."""
    valid = ids != ignore_index
    trainer = types.SimpleNamespace(loss_add_tail=tail,
                                    _reduce_divergence_loss=server.ServerDistillationTrainer._reduce_divergence_loss)
    student_log_probs = F.log_softmax(F.linear(x, w, b) / temperature, -1)
    result = {"topk_logprobs": torch.where(valid, log_q, float("-inf"))[None],
              "topk_token_ids": torch.where(valid, ids, 0)[None]}
    labels = torch.where(valid.any(1), 0, -100)[None]
    return server.ServerDistillationTrainer._compute_server_forward_kl_loss(
        trainer, result, student_log_probs[None], labels)


TOPK_TEACHERS = {"diffuse": dict(concentrated=False), "most mass": dict(concentrated=True)}


@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
@pytest.mark.parametrize("tail", [True, False], ids=["tail", "renormalised"])
@pytest.mark.parametrize("teacher", TOPK_TEACHERS, ids=TOPK_TEACHERS)
@pytest.mark.parametrize("k", [1, 4, 64])
def test_topk_equals_trl_server_forward_kl(backend, k, teacher, tail, temperature):
    """float64. TRL's tail bucket clamps log(sum q) at -1e-7 (q_tail >= 1e-7) and takes p_tail =
    1 - sum p: where the top-k holds nearly all mass (q_tail ~ 1e-10) that adds ~1e-6 to its
    loss, so there the comparison is to 1e-5; elsewhere to float64 rounding."""
    x, w, b, ids, log_q = topk_problem(12, 8, 100, k=k, seed=14, **TOPK_TEACHERS[teacher])
    xs, ws, bs = leaves(x, w, b)
    ours = crossent.linear_topk_distillation_loss(xs, ws, ids, log_q, linear_bias=bs, temperature=temperature,
                                                  tail=tail, chunk_size=5)
    xr, wr, br = leaves(x, w, b)
    theirs = _trl_server_topk(xr, wr, br, ids, log_q, temperature=temperature, tail=tail)
    loose = tail and TOPK_TEACHERS[teacher]["concentrated"]
    tol = dict(rtol=1e-5, atol=1e-5) if loose else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours, theirs, **tol)
    for g, gt in zip(_student_grads(ours, (xs, ws, bs)), _student_grads(theirs, (xr, wr, br))):
        torch.testing.assert_close(g, gt, **tol)


def test_topk_float32_no_worse_than_trl(backend):
    """float32 inputs: crossent's value and gradients no worse than TRL's float32 composition,
    against the float64 reference."""
    x, w, b, ids, log_q = topk_problem(12, 8, 300, k=16, seed=15)
    cast = [a.float() for a in (x, w, b)]
    xs, ws, bs = leaves(*cast)
    ours = crossent.linear_topk_distillation_loss(xs, ws, ids, log_q.float(), linear_bias=bs, temperature=1.5)
    xr, wr, br = leaves(*cast)
    theirs = _trl_server_topk(xr, wr, br, ids, log_q.float(), temperature=1.5, tail=True)
    x64, w64, b64 = leaves(x, w, b)
    ref = crossent.reference.linear_topk_distillation_loss(x64, w64, ids, log_q, b64, temperature=1.5)
    assert_no_worse_than_torch(ours, theirs, ref, torch.float32)
    go = grad_out(ref)
    for g, gt, gr in zip(_student_grads(ours, (xs, ws, bs), go.float()), _student_grads(theirs, (xr, wr, br), go.float()),
                         _student_grads(ref, (x64, w64, b64), go)):
        assert_no_worse_than_torch(g, gt, gr, torch.float32)
