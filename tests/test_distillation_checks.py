"""The distillation losses' errors (src/crossent/_checks/distillation.py): one clear error per bad
argument, naming it and its value, of torch's exception type too; nothing of the caller's is
modified."""

from __future__ import annotations

import re

import pytest
import torch
from distill_helpers import dense_problem, leaves, topk_problem

import crossent

X, W, B, XT, WT, BT, T = dense_problem()
XK, WK, BK, IDS, LQ = (a.float() if a.is_floating_point() else a for a in topk_problem(k=4))


def dense(**kw):
    args = dict(input=X, linear_weight=W, teacher_input=XT, teacher_linear_weight=WT)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return lambda: crossent.linear_distillation_loss(*args.values(), **kw)


def topk(**kw):
    args = dict(input=XK, linear_weight=WK, teacher_ids=IDS, teacher_log_probs=LQ)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return lambda: crossent.linear_topk_distillation_loss(*args.values(), **kw)


DENSE_ERRORS = {
    "vocabulary mismatch": (dense(teacher_linear_weight=WT[:-1]), ValueError,
                            "teacher_linear_weight must have the student's vocabulary (V = linear_weight.shape[0] = 37), got 36"),
    "teacher rows": (dense(teacher_input=XT[:-1]), ValueError, "teacher_input must have one row per row of input (12)"),
    "3-D input": (dense(input=X[None]), ValueError, "input must have shape (N, in_features), got shape (1, 12, 8)"),
    "weight width": (dense(linear_weight=W[:, :-1]), ValueError, "linear_weight must have shape (V, in_features)"),
    "teacher weight width": (dense(teacher_linear_weight=WT[:, :-1]), ValueError,
                             "teacher_linear_weight must have shape (V, in_features) with in_features = teacher_input"),
    "teacher bias shape": (dense(teacher_linear_bias=BT[:-1]), ValueError, "teacher_linear_bias must have shape (37,), got (36,)"),
    "student dtypes": (dense(linear_weight=W.double()), TypeError, "linear_weight has dtype torch.float64 but input"),
    "teacher dtypes": (dense(teacher_input=XT.double()), TypeError, "teacher_linear_weight has dtype torch.float32 but teacher_input"),
    "integer input": (dense(input=X.long()), TypeError, "input must be a floating-point tensor"),
    "beta > 1": (dense(beta=1.5), ValueError, "beta must be in [0, 1] (0 forward KL, 1 reverse KL), got 1.5"),
    "beta < 0": (dense(beta=-0.1), ValueError, "beta must be in [0, 1]"),
    "beta nan": (dense(beta=float("nan")), ValueError, "beta must be finite, got nan"),
    "beta string": (dense(beta="0.5"), TypeError, "beta must be a number, got str"),
    "temperature 0": (dense(temperature=0.0), ValueError, "temperature must be > 0, got 0.0"),
    "temperature inf": (dense(temperature=float("inf")), ValueError, "temperature must be finite"),
    "negative hard_weight": (dense(hard_weight=-1.0, target=T), ValueError, "hard_weight must be >= 0, got -1.0"),
    "negative soft_weight": (dense(soft_weight=-0.5), ValueError, "soft_weight must be >= 0, got -0.5"),
    "hard_weight without target": (dense(hard_weight=1.0), ValueError, "hard_weight=1.0 needs target"),
    "target out of range": (dense(target=torch.full_like(T, 37)), IndexError, "target contains 37 at index (0,)"),
    "target shape": (dense(target=T[:-1]), ValueError, "target must have shape (12,), got (11,)"),
    "target dtype": (dense(target=T.float()), TypeError, "target of class indices must be int64"),
    "target -100 with another ignore_index": (dense(target=T, ignore_index=5), IndexError,
                                              "target contains -100 at index (1,)"),
    "reduction": (dense(reduction="batchmean"), ValueError, "reduction must be 'none', 'mean' or 'sum', got 'batchmean'"),
    "normalizer with sum": (dense(reduction="sum", normalizer=3.0), ValueError, "normalizer=3.0 replaces the denominator"),
    "normalizer 0": (dense(normalizer=0.0), ValueError, "normalizer must be > 0 (or None), got 0.0"),
    "chunk_size 0": (dense(chunk_size=0), ValueError, "chunk_size must be >= 1 (rows per chunk), got 0"),
    "softcap": (dense(softcap=-1.0), ValueError, "softcap must be > 0 (or None), got -1.0"),
    "teacher_softcap": (dense(teacher_softcap=0.0), ValueError, "teacher_softcap must be > 0 (or None), got 0.0"),
}

TOPK_ERRORS = {
    "k > V": (topk(linear_weight=WK[:3]), ValueError, "teacher_ids has k = 4 ids per row, more than the V = 3 classes"),
    "id >= V": (topk(teacher_ids=torch.where(IDS == IDS[0, 0], 100, IDS)), IndexError,
                "teacher_ids contains 100 at index (0, 0), outside the classes [0, 100)"),
    "negative id": (topk(teacher_ids=torch.where(IDS == IDS[0, 0], -5, IDS)), IndexError, "teacher_ids contains -5"),
    "repeated id": (topk(teacher_ids=IDS[:, [0, 0]], teacher_log_probs=LQ[:, :2]), ValueError,
                    f"teacher_ids repeats id {int(IDS[0, 0])} in row 0"),
    "int32 ids": (topk(teacher_ids=IDS.int()), TypeError, "teacher_ids must be int64, got torch.int32; use teacher_ids.long()"),
    "logits, not log-probs": (topk(teacher_log_probs=LQ + 10), ValueError,
                              "teacher_log_probs must be log-probabilities (<= 0)"),
    "mass above 1": (topk(teacher_ids=IDS[:, :2], teacher_log_probs=torch.full((10, 2), 0.6).log()), ValueError,
                     "probabilities sum to at most 1 per row, got 1.2 in row 0"),
    "nan log-prob": (topk(teacher_log_probs=torch.where(IDS == IDS[0, 0], float("nan"), LQ)), ValueError,
                     "teacher_log_probs is nan at index (0, 0)"),
    "shapes differ": (topk(teacher_log_probs=LQ[:, :3]), ValueError,
                      "teacher_log_probs must have the shape of teacher_ids (10, 4), got (10, 3)"),
    "1-D ids": (topk(teacher_ids=IDS[:, 0], teacher_log_probs=LQ[:, 0]), ValueError,
                "teacher_ids must have shape (N, k) = (10, k) with k >= 1, got (10,)"),
    "rows differ": (topk(teacher_ids=IDS[:-1], teacher_log_probs=LQ[:-1]), ValueError, "got (9, 4)"),
    "integer log-probs": (topk(teacher_log_probs=IDS), TypeError, "teacher_log_probs must be a floating-point tensor"),
    "renormalising nothing": (topk(teacher_log_probs=torch.full_like(LQ, float("-inf")), tail=False), ValueError,
                              "with tail=False the teacher's mass on the ids is renormalised, but row 0 has none"),
    "tail not bool": (topk(tail=1), TypeError, "tail must be True or False, got 1"),
    "temperature < 0": (topk(temperature=-1.0), ValueError, "temperature must be > 0, got -1.0"),
    "reduction": (topk(reduction="batchmean"), ValueError, "reduction must be 'none', 'mean' or 'sum'"),
}


@pytest.mark.parametrize("call,exc,message", DENSE_ERRORS.values(), ids=DENSE_ERRORS)
def test_dense_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)) as info:
        call()
    assert str(info.value).startswith("linear_distillation_loss: ")


@pytest.mark.parametrize("call,exc,message", TOPK_ERRORS.values(), ids=TOPK_ERRORS)
def test_topk_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)) as info:
        call()
    assert str(info.value).startswith("linear_topk_distillation_loss: ")


def test_the_options_are_keyword_only():
    with pytest.raises(TypeError):
        crossent.linear_distillation_loss(X, W, XT, WT, B)
    with pytest.raises(TypeError):
        crossent.linear_topk_distillation_loss(XK, WK, IDS, LQ, BK)


def test_accepted_edge_cases():
    """The teacher in its own dtype (bfloat16 beside a float32 student), log-probs in another
    dtype, a top-k mass of exactly 1 (q_tail = 0), any ignore_index, the public names."""
    assert torch.isfinite(crossent.linear_distillation_loss(X, W, XT.bfloat16(), WT.bfloat16()))
    assert crossent.linear_topk_distillation_loss(XK, WK, IDS, LQ.double()).dtype == torch.float32
    half = torch.full((10, 2), 0.5).log()
    assert torch.isfinite(crossent.linear_topk_distillation_loss(XK, WK, IDS[:, :2], half))
    ids = torch.where(IDS == -100, 7 if 7 not in IDS else 99, IDS)
    crossent.linear_topk_distillation_loss(XK, WK, ids, LQ, ignore_index=int(ids[2, 0]))
    assert crossent.functional.linear_distillation_loss is crossent.linear_distillation_loss
    assert {"linear_distillation_loss", "linear_topk_distillation_loss"} <= set(crossent.__all__)


def test_nothing_of_the_callers_is_modified():
    xs, ws, bs = leaves(XK, WK, BK)
    ids, lq = IDS.clone(), LQ.clone()
    versions = [a._version for a in (xs, ws, bs, ids, lq)]
    loss = crossent.linear_topk_distillation_loss(xs, ws, ids, lq, linear_bias=bs, tail=False, chunk_size=3)
    loss.backward()
    assert torch.equal(ids, IDS) and torch.equal(lq, LQ)
    assert torch.equal(xs.detach(), XK) and torch.equal(ws.detach(), WK) and torch.equal(bs.detach(), BK)
    assert versions == [a._version for a in (xs, ws, bs, ids, lq)]


def test_the_options_survive_their_encoding():
    """DistillationOptions.encode/decode (for a custom op): every field, each alone and all."""
    import dataclasses

    from crossent._options import DistillationOptions

    non_default = dict(beta=0.25, temperature=1.5, softcap=30.0, teacher_softcap=20.0, hard_weight=0.5,
                       soft_weight=2.0, tail=False, topk=True, ignore_index=7, reduction="sum", normalizer=2.5,
                       chunk_size=64, dtype=torch.float32)
    assert {f.name for f in dataclasses.fields(DistillationOptions)} == set(non_default)
    for name, value in non_default.items():
        opts = DistillationOptions(**{name: value})
        assert opts.encode() != DistillationOptions().encode()
        assert DistillationOptions.decode(opts.encode()) == opts
    assert DistillationOptions.decode(DistillationOptions(**non_default).encode()) == DistillationOptions(**non_default)
