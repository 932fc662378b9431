"""crossent's linear cross-entropy API is torch's (2.13+): the same signatures, and the same
values and gradients as torch.nn.functional.linear_cross_entropy / nn.LinearCrossEntropyLoss on a
grid of every option they have. On a torch without them, the same grid against torch's reference
composition (F.linear, then F.cross_entropy), which is what torch's documentation promises."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close
from linear_helpers import class_weight, grad_output, leaves, make, unfused

HAS_TORCH_LCE = hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyLoss")
EXTENSIONS = ["z_loss", "softcap", "normalizer", "chunk_size", "dtype"]
MODULE_EXTENSIONS = ["z_loss", "softcap", "normalizer", "chunk_size", "loss_dtype"]


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_functional_signature_is_torchs_plus_keyword_only_extensions():
    ours = _params(crossent.linear_cross_entropy)
    names = [n for n, _, _ in ours]
    assert names[-len(EXTENSIONS):] == EXTENSIONS
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in ours[-len(EXTENSIONS):])
    expected = [
        ("input", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("linear_weight", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("target", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("linear_bias", "KEYWORD_ONLY", None), ("weight", "KEYWORD_ONLY", None),
        ("reduction", "KEYWORD_ONLY", "mean"), ("ignore_index", "KEYWORD_ONLY", None),
        ("label_smoothing", "KEYWORD_ONLY", 0.0), ("options", "KEYWORD_ONLY", None),
    ]
    assert [(n, k.name, d) for n, k, d in ours[: -len(EXTENSIONS)]] == expected
    if HAS_TORCH_LCE:
        assert ours[: -len(EXTENSIONS)] == _params(F.linear_cross_entropy)


def test_module_signature_is_torchs_plus_keyword_only_extensions():
    ours = _params(crossent.nn.LinearCrossEntropyLoss.__init__)
    assert [n for n, _, _ in ours[-len(MODULE_EXTENSIONS):]] == MODULE_EXTENSIONS
    assert all(k is inspect.Parameter.KEYWORD_ONLY for _, k, _ in ours[-len(MODULE_EXTENSIONS):])
    assert [n for n, _, _ in ours[: -len(MODULE_EXTENSIONS)]] == [
        "self", "in_features", "num_classes", "out_features", "bias", "device", "dtype",
        "reduction", "weight", "ignore_index", "label_smoothing", "options",
    ]
    if HAS_TORCH_LCE:
        assert ours[: -len(MODULE_EXTENSIONS)] == _params(torch.nn.LinearCrossEntropyLoss.__init__)
        assert _params(crossent.nn.LinearCrossEntropyLoss.forward) == _params(torch.nn.LinearCrossEntropyLoss.forward)


def torch_linear_cross_entropy(x, w, t, **kw):
    """torch's function where installed, else its documented reference composition."""
    if HAS_TORCH_LCE:
        return F.linear_cross_entropy(x, w, t, **kw)
    kw.pop("options", None)
    b = kw.pop("linear_bias", None)
    ignore = kw.pop("ignore_index", None)
    return unfused(x, w, t, b, ce=F.cross_entropy, ignore_index=-100 if ignore is None else ignore, **kw)


# (targets, ignore_index): None means torch's default; 3 ignores a valid class wherever it occurs.
TARGETS = [("index", None), ("index", -100), ("index", 3), ("probs", None)]
GRID = list(itertools.product(
    TARGETS, [False, True], [0.0, 0.15], ["mean", "sum", "none"], [False, True], [(), (3,)],
))


def _ids(case):
    (kind, ignore), weighted, eps, reduction, bias, heads = case
    return f"{kind}-ig{ignore}-w{int(weighted)}-eps{eps}-{reduction}-b{int(bias)}-k{len(heads)}"


@pytest.mark.parametrize("backend", [None, crossent.Backend.FUSED], ids=["auto", "fused"])
@pytest.mark.parametrize("case", GRID, ids=[_ids(c) for c in GRID])
def test_values_and_gradients_equal_torchs(case, backend):
    (kind, ignore), weighted, eps, reduction, bias, heads = case
    soft = kind == "probs"
    x, w, b, t = make(11, 6, 9, heads=heads, soft=soft, bias=bias, seed=len(heads) + 7 * bias)
    if ignore is not None and ignore >= 0:
        t[t == -100] = ignore
    if bias:  # a forbidden class: -inf bias (torch's values: inf with smoothing, nan with probabilities)
        b[-1] = float("-inf")
        if soft:
            t[:, -1] = 0.0
            t /= t.sum(1, keepdim=True)
        else:
            t[t == 8] = 7
    kw = dict(reduction=reduction, label_smoothing=eps)
    if weighted:
        kw["weight"] = class_weight(9, torch.float32)
    if ignore is not None:
        kw["ignore_index"] = ignore
    xa, wa, ba = leaves(x, w, b)
    xt, wt, bt = leaves(x, w, b)
    with crossent.use_backend(backend) if backend else _no_force():
        ours = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, **kw)
    theirs = torch_linear_cross_entropy(xt, wt, t, linear_bias=bt, **kw)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert_close(ours, theirs)
    go = grad_output(ours)
    ga = torch.autograd.grad(ours, [a for a in (xa, wa, ba) if a is not None], go)
    gt = torch.autograd.grad(theirs, [a for a in (xt, wt, bt) if a is not None], go)
    for a, c in zip(ga, gt):
        assert a.shape == c.shape
        assert_close(a, c)


def _no_force():
    """Lift any outer use_backend block (the unforced rule)."""
    from crossent import _forced

    return _forced.block(None)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_unbatched_input_equals_torchs(soft, reduction):
    x, w, b, t = make(1, 6, 9, soft=soft, ignored=0, unbatched=True)
    for backend in (None, crossent.Backend.FUSED):
        xa, xt = leaves(x, x)
        with crossent.use_backend(backend) if backend else _no_force():
            ours = crossent.linear_cross_entropy(xa, w, t, linear_bias=b, reduction=reduction)
        theirs = torch_linear_cross_entropy(xt, w, t, linear_bias=b, reduction=reduction)
        assert ours.shape == theirs.shape == ()
        assert_close(ours, theirs)
        assert_close(torch.autograd.grad(ours, xa)[0], torch.autograd.grad(theirs, xt)[0])


@pytest.mark.skipif(not HAS_TORCH_LCE, reason="torch without LinearCrossEntropyOptions")
@pytest.mark.parametrize("fields", [
    {}, {"allow_retain_graph": True}, {"batch_chunk_size": 4}, {"chunking_method": "aspect_ratio:2"},
    {"acc_policy": "compact"}, {"chunking_method": None},
])
def test_torchs_options_are_accepted_and_change_no_value(fields):
    options = torch.nn.LinearCrossEntropyOptions(**fields)
    x, w, b, t = make(16, 6, 40, seed=2)
    xa, xt = leaves(x, x)
    with crossent.use_backend(crossent.Backend.FUSED):
        ours = crossent.linear_cross_entropy(xa, w, t, linear_bias=b, options=options)
    theirs = F.linear_cross_entropy(xt, w, t, linear_bias=b, options=options)
    assert_close(ours, theirs)
    assert_close(torch.autograd.grad(ours, xa)[0], torch.autograd.grad(theirs, xt)[0])


@pytest.mark.skipif(not HAS_TORCH_LCE, reason="torch without LinearCrossEntropyOptions")
@pytest.mark.parametrize("method", ["aspect_ratio", "aspect_ratio:2", "aspect_ratio:4"])
@pytest.mark.parametrize("n,d,v", [(40, 8, 100), (2048, 512, 128256), (7, 64, 32), (1000, 3, 5)])
def test_chunk_sizes_from_options_are_torchs(method, n, d, v):
    from crossent import _checks

    options = torch.nn.LinearCrossEntropyOptions(chunking_method=method)
    rows, _ = _checks.linear_chunking("f", "mean", None, None, options, n, d, v)
    assert rows == options._adjust(n, d, v, torch.float32).batch_chunk_size


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("out_features,bias", [((), False), ((), True), ((2, 3), True)])
def test_module_owns_its_layer_like_torchs(out_features, bias):
    torch.manual_seed(0)
    cw = torch.rand(7) + 0.5
    ours = crossent.nn.LinearCrossEntropyLoss(
        5, 7, out_features=out_features, bias=bias, weight=cw, label_smoothing=0.1, reduction="sum"
    )
    assert isinstance(ours.linear, torch.nn.Linear)
    assert ours.linear.weight.shape == (7 * math.prod(out_features), 5)
    names = {n for n, _ in ours.named_parameters()}
    assert names == ({"linear.weight", "linear.bias"} if bias else {"linear.weight"})
    assert "weight" in dict(ours.named_buffers())
    x = torch.randn(4, 5, requires_grad=True)
    t = torch.randint(0, 7, (4, *out_features))
    loss = ours(x, t)
    logits = ours.linear(x).reshape(4, 7, *out_features)
    expected = F.cross_entropy(logits, t, weight=cw, label_smoothing=0.1, reduction="sum")
    assert_close(loss, expected)
    g = torch.autograd.grad(loss, [x, *ours.parameters()])
    ge = torch.autograd.grad(expected, [x, *ours.parameters()])
    for a, c in zip(g, ge):
        assert_close(a, c)
    if HAS_TORCH_LCE:  # torch's module loads crossent's state_dict and gives the same loss
        theirs = torch.nn.LinearCrossEntropyLoss(
            5, 7, out_features=out_features, bias=bias, weight=cw, label_smoothing=0.1, reduction="sum"
        )
        theirs.load_state_dict(ours.state_dict())
        assert_close(theirs(x, t), loss)
        ours.load_state_dict(theirs.state_dict())


def test_module_extensions_and_device_dtype():
    m = crossent.nn.LinearCrossEntropyLoss(4, 9, dtype=torch.float64, z_loss=1e-3, softcap=4.0,
                                           chunk_size=2)
    assert m.linear.weight.dtype == torch.float64
    x, _, _, t = make(6, 4, 9, torch.float64)
    expected = crossent.linear_cross_entropy(x, m.linear.weight, t, z_loss=1e-3, softcap=4.0, chunk_size=2)
    assert torch.equal(m(x, t), expected)
    m.normalizer = 5.0
    assert_close(m(x, t), crossent.linear_cross_entropy(x, m.linear.weight, t, reduction="sum",
                                                         z_loss=1e-3, softcap=4.0) / 5.0)
    half = crossent.nn.LinearCrossEntropyLoss(4, 9, dtype=torch.bfloat16, loss_dtype=torch.float32)
    out = half(x.bfloat16(), t)
    assert out.dtype == torch.float32
    assert torch.equal(out, crossent.linear_cross_entropy(x.bfloat16(), half.linear.weight, t, dtype=torch.float32))
    assert "in_features=4, num_classes=9" in repr(half)
