"""crossent.functional against torch and against the float64 reference, over parameter grids."""

from __future__ import annotations

import itertools
import os
import warnings
import zlib

import pytest
import torch
import torch.nn.functional as TF

import crossent
from conftest import assert_close, assert_no_worse_than_torch
from crossent import reference

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(3, 5), (7, 423), (2, 4, 3, 5), (5,), (0, 5), (1, 40000)]


def _class_targets(shape, C, ignore_index, gen):
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    t = torch.randint(0, C, tshape, generator=gen)
    if t.dim() and ignore_index is not None:
        t.view(-1)[::3] = ignore_index
    return t


def _mask_neg_inf(x, t, class_dim):
    """-inf on every third logit (a common way to forbid classes), never on a target class: the
    losses stay finite without smoothing (with smoothing torch's are inf, with probability targets
    0 * -inf = nan) and every gradient is finite."""
    mask = torch.zeros(x.shape, dtype=torch.bool)
    mask.view(-1)[1::3] = True
    if t.dim() == x.dim():  # probabilities: no mass on the masked classes
        t.masked_fill_(mask, 0.0)
        t.div_(t.sum(class_dim, keepdim=True))
    elif x.numel():
        keep = torch.where((t >= 0) & (t < x.shape[class_dim]), t, 0).unsqueeze(class_dim)
        mask.scatter_(class_dim, keep, False)
    return x.masked_fill(mask, float("-inf"))


def _grads(loss, inputs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(loss.shape, generator=gen, dtype=torch.float64).to(loss.dtype)
    return torch.autograd.grad(loss, inputs, go)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_class_index_targets_match_torch_and_reference(on_backend, shape, reduction, weighted, ignore_index, label_smoothing):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, reduction, weighted, ignore_index)).encode()))
    C = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    t = _class_targets(shape, C, ignore_index, gen)
    if ignore_index == 1:  # half the grid with -inf masks
        x = _mask_neg_inf(x, t, 0 if len(shape) == 1 else 1)
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    xs = [x.clone().requires_grad_() for _ in range(3)]
    ours = crossent.cross_entropy(xs[0], t, **kw)
    theirs = TF.cross_entropy(xs[1], t, **kw)
    ref = reference.cross_entropy(xs[2], t, **kw)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert_close(ours, theirs)
    assert_close(ours, ref)
    if x.numel():
        (g0,), (g1,), (g2,) = _grads(ours, [xs[0]]), _grads(theirs, [xs[1]]), _grads(ref, [xs[2]])
        assert_close(g0, g1)
        assert_close(g0, g2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, kw",
    [
        ((8, 11), {}),
        ((8, 11), dict(reduction="sum", label_smoothing=0.2)),
        ((8, 11), dict(reduction="none", weighted=True)),
        ((3, 7, 5), dict(weighted=True, label_smoothing=0.1)),
        ((2, 70001), {}),  # a row longer than one chunk
        ((11,), {}),
    ],
)
def test_dtypes_no_worse_than_torch(on_backend, dtype, shape, kw):
    kw = dict(kw)
    gen = torch.Generator().manual_seed(1)
    C = shape[0] if len(shape) == 1 else shape[1]
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    t = _class_targets(shape, C, -100, gen)
    w = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.1) if kw.pop("weighted", False) else None
    x = x64.to(dtype)
    xo, xt, xr = (x.clone().requires_grad_() for _ in range(3))
    wl = w.to(dtype) if w is not None else None
    ours = crossent.cross_entropy(xo, t, wl, **kw)
    theirs = TF.cross_entropy(xt, t, wl, **kw)
    ref = reference.cross_entropy(xr.double(), t, wl.double() if wl is not None else None, **kw)
    assert ours.dtype == dtype == theirs.dtype
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    (go,), (gt,), (gr,) = _grads(ours, [xo]), _grads(theirs, [xt]), _grads(ref, [xr])
    assert go.dtype == dtype
    assert_no_worse_than_torch(go, gt, gr, dtype)


@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 2), (5,)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_probability_targets(on_backend, shape, reduction, weighted, label_smoothing):
    gen = torch.Generator().manual_seed(3)
    dim = 0 if len(shape) == 1 else 1
    C = shape[dim]
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.randn(shape, generator=gen, dtype=torch.float64).softmax(dim)
    if weighted:  # half the grid with -inf masks
        x = _mask_neg_inf(x, t, dim)
    w = torch.rand(C, generator=gen, dtype=torch.float64) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=label_smoothing)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = crossent.cross_entropy(xo, t, **kw), TF.cross_entropy(xt, t, **kw)
    assert_close(ours, theirs)
    assert_close(_grads(ours, [xo])[0], _grads(theirs, [xt])[0])


def test_probability_target_and_weight_gradients_match_torch(on_backend):
    """torch differentiates soft-target cross-entropy w.r.t. target and weight too."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(6, 5, generator=gen, dtype=torch.float64).softmax(1)
    w = torch.rand(5, generator=gen, dtype=torch.float64)
    a = [v.clone().requires_grad_() for v in (x, t, w)]
    b = [v.clone().requires_grad_() for v in (x, t, w)]
    ours = crossent.cross_entropy(a[0], a[1], a[2], label_smoothing=0.1)
    theirs = TF.cross_entropy(b[0], b[1], b[2], label_smoothing=0.1)
    for ga, gb in zip(torch.autograd.grad(ours, a), torch.autograd.grad(theirs, b)):
        assert_close(ga, gb)


def test_probability_targets_promote_dtype_like_torch():
    x = torch.randn(4, 3)
    t = torch.rand(4, 3, dtype=torch.float64).softmax(1)
    assert crossent.cross_entropy(x, t).dtype == TF.cross_entropy(x, t).dtype == torch.float64


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_all_targets_ignored(on_backend, reduction, label_smoothing):
    x = torch.randn(4, 5, dtype=torch.float64)
    t = torch.full((4,), -100)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = crossent.cross_entropy(xo, t, reduction=reduction, label_smoothing=label_smoothing)
    theirs = TF.cross_entropy(xt, t, reduction=reduction, label_smoothing=label_smoothing)
    assert_close(ours, theirs)
    (g,) = torch.autograd.grad(ours.sum(), xo)
    assert torch.equal(g, torch.zeros_like(g))


def test_uint8_targets():
    x = torch.randn(4, 5)
    t = torch.tensor([0, 4, 2, 255], dtype=torch.uint8)
    assert_close(crossent.cross_entropy(x, t, ignore_index=255), TF.cross_entropy(x, t, ignore_index=255))


def test_non_contiguous_inputs(on_backend):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(9, 13, generator=gen, dtype=torch.float64)
    x = base.t()  # (13, 9), class dim strided
    t = torch.randint(0, 9, (26,), generator=gen)[::2]
    xo, xt = x.clone().t().t().requires_grad_(), x.detach().clone().requires_grad_()
    xo = base.clone().requires_grad_()
    ours = crossent.cross_entropy(xo.t(), t)
    theirs = TF.cross_entropy(xt, t)
    assert_close(ours, theirs)
    assert_close(torch.autograd.grad(ours, xo)[0].t(), torch.autograd.grad(theirs, xt)[0])
    kd = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64).permute(0, 3, 1, 2)  # (2, 5, 3, 4)
    tk = torch.randint(0, 5, (2, 3, 4), generator=gen)
    assert_close(crossent.cross_entropy(kd, tk, reduction="none"), TF.cross_entropy(kd, tk, reduction="none"))


@pytest.mark.parametrize(
    "size_average, reduce", [(None, False), (False, None), (True, True), (False, True), (True, False)]
)
def test_legacy_arguments_override_reduction_with_torchs_warning(size_average, reduce):
    x, t = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings(record=True) as ours_w:
        warnings.simplefilter("always")
        ours = crossent.cross_entropy(x, t, size_average=size_average, reduce=reduce, reduction="sum")
    with warnings.catch_warnings(record=True) as theirs_w:
        warnings.simplefilter("always")
        theirs = TF.cross_entropy(x, t, size_average=size_average, reduce=reduce, reduction="sum")
    assert_close(ours, theirs)
    assert [str(w.message) for w in ours_w] == [str(w.message) for w in theirs_w]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss, softcap", [(1e-3, None), (0.0, 5.0), (1e-2, 3.0)])
@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_extensions_match_reference(on_backend, reduction, z_loss, softcap, target_kind):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 9, generator=gen, dtype=torch.float64) * 5
    if target_kind == "index":
        t = torch.randint(0, 9, (7,), generator=gen)
        t[2] = -100
    else:
        t = torch.rand(7, 9, generator=gen, dtype=torch.float64).softmax(1)
    w = torch.rand(9, generator=gen, dtype=torch.float64) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = crossent.cross_entropy(xo, t, **kw, z_loss=z_loss, softcap=softcap)
    ref = reference.cross_entropy(xr, t, **kw, z_loss=z_loss, softcap=softcap)
    assert_close(ours, ref)
    assert_close(_grads(ours, [xo])[0], _grads(ref, [xr])[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 7), (64, 5000), (2, 7, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_dtype_float32_is_the_loss_of_the_upcast_input(request, on_backend, dtype, shape, reduction, target_kind):
    """dtype=torch.float32 on 16-bit logits: torch's loss of input.float() (float32, not rounded
    to 16 bits), with a gradient in the input's dtype; without dtype, torch's result dtype."""
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=gen)).to(dtype)
    if target_kind == "index":
        t = _class_targets(shape, shape[1], -100, gen)
    else:
        t = torch.randn(shape, generator=gen).softmax(1)
    xa = x.clone().requires_grad_()
    got = crossent.cross_entropy(xa, t, reduction=reduction, dtype=torch.float32)
    xt = x.clone().requires_grad_()
    want = TF.cross_entropy(xt.float(), t, reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert crossent.cross_entropy(x, t, reduction=reduction).dtype == torch.result_type(x, t)
    (g,) = _grads(got, (xa,))
    (g_want,) = _grads(want, (xt,))
    assert g.dtype == dtype
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    # Triton's interpreter casts float32 to bfloat16 by truncation (triton/runtime/interpreter.py:
    # cast_impl gives _convert_float no rounding mode), where a GPU rounds to nearest even: one more
    # bf16 ulp (2 units) there. Measured on [(2, 7, 3), probs]: Triton 1.8-1.9 units from the float64
    # gradient, every other path 0.8 (correctly rounded).
    truncated = on_backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    torch.testing.assert_close(g.float(), g_want.float(), atol=1e-5, rtol=(5 if truncated else 3) * unit)


def test_dtype_argument_of_linear_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(8, 16, generator=gen).bfloat16()
    w = torch.randn(300, 16, generator=gen).bfloat16()
    t = torch.randint(0, 300, (8,), generator=gen)
    got = crossent.linear_cross_entropy(h, w, t, dtype=torch.float32)
    want = TF.cross_entropy(TF.linear(h, w).float(), t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert crossent.linear_cross_entropy(h, w, t).dtype == torch.bfloat16
    with crossent.use_backend("reference"):
        assert crossent.linear_cross_entropy(h, w, t, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match=r"linear_cross_entropy: dtype=torch.float64 with a torch.bfloat16"):
        crossent.linear_cross_entropy(h, w, t, dtype=torch.float64)


def test_no_grad_and_eval_paths_equal_the_training_path():
    x = torch.randn(16, 33)
    t = torch.randint(0, 33, (16,))
    train = crossent.cross_entropy(x.clone().requires_grad_(), t, label_smoothing=0.1)
    with torch.no_grad():
        nograd = crossent.cross_entropy(x.clone().requires_grad_(), t, label_smoothing=0.1)
    plain = crossent.cross_entropy(x, t, label_smoothing=0.1)
    assert nograd.grad_fn is None and plain.grad_fn is None
    assert torch.equal(train.detach(), nograd) and torch.equal(nograd, plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(6, 7), (2, 7, 3)])
def test_inplace_backward_writes_the_gradient_into_the_logits(dtype, shape):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen).to(dtype)
    t = torch.randint(0, 7, (shape[0],) + shape[2:], generator=gen)
    expected_x = x.clone().requires_grad_()
    with crossent.use_backend("fused"):
        expected = crossent.cross_entropy(expected_x, t)
    expected.backward()
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as in a model
    loss = crossent.cross_entropy(logits, t, inplace_backward=True)
    assert torch.equal(loss, expected.detach())
    loss.backward()
    assert torch.equal(leaf.grad, expected_x.grad)
    assert torch.equal(logits.detach(), expected_x.grad)  # the logits now hold the gradient


def test_inplace_backward_is_caught_when_the_logits_are_needed_elsewhere():
    x = torch.randn(4, 5, requires_grad=True)
    logits = x * 1.0
    other = (logits**2).sum()  # saves logits for its backward
    loss = crossent.cross_entropy(logits, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss", "bce", "bce_logits"])
def test_inputs_are_never_modified(fn):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 5, generator=gen).requires_grad_()
    w = torch.rand(5, generator=gen)
    if fn in ("cross_entropy", "nll_loss"):
        t = torch.randint(0, 5, (6,), generator=gen)
        args = (x.log_softmax(1).detach().requires_grad_() if fn == "nll_loss" else x, t, w)
        call = getattr(crossent, fn)
    else:
        t = torch.rand(6, 5, generator=gen)
        args = (x.sigmoid().detach().requires_grad_() if fn == "bce" else x, t, w)
        call = crossent.binary_cross_entropy if fn == "bce" else crossent.binary_cross_entropy_with_logits
    before = [a.detach().clone() for a in args]
    versions = [a._version for a in args]
    call(*args).backward()
    for a, b, v in zip(args, before, versions):
        assert torch.equal(a.detach(), b) and a._version == v


def test_second_backward_through_the_same_loss_accumulates_as_torch():
    x = torch.randn(4, 5, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    with crossent.use_backend("fused"):
        loss = crossent.cross_entropy(x, t)
    loss.backward(retain_graph=True)
    loss.backward()
    xt = x.detach().clone().requires_grad_()
    (2 * TF.cross_entropy(xt, t)).backward()
    assert_close(x.grad, xt.grad)


# ---------------------------------------------------------------------------------------------
# nll_loss and the binary losses


@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3), (5,), (0, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_nll_loss(on_backend, shape, reduction, weighted, ignore_index):
    gen = torch.Generator().manual_seed(9)
    C = shape[0] if len(shape) == 1 else shape[1]
    lp = torch.randn(shape, generator=gen, dtype=torch.float64).log_softmax(0 if len(shape) == 1 else 1)
    t = _class_targets(shape, C, ignore_index, gen)
    w = torch.rand(C, generator=gen, dtype=torch.float64) if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction)
    a, b = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    ours, theirs = crossent.nll_loss(a, t, **kw), TF.nll_loss(b, t, **kw)
    assert_close(ours, theirs)
    if lp.numel():
        assert_close(_grads(ours, [a])[0], _grads(theirs, [b])[0])


BCE_CASES = [
    ((4, 3), None, None),
    ((4, 3), (3,), (3,)),
    ((2, 4, 3), (4, 1), (3,)),
    ((7,), (7,), (1,)),
    ((0, 3), None, (3,)),
    ((300, 257), (257,), (257,)),  # several chunks
    ((), None, None),
]


@pytest.mark.parametrize("shape, wshape, pwshape", BCE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits(on_backend, shape, wshape, pwshape, reduction):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 10
    if x.numel() > 2:  # infinite logits: torch's nan (x = -inf) and inf or nan (x = +inf)
        x.view(-1)[1::5] = float("-inf")
        x.view(-1)[3::7] = float("inf")
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    if y.numel() > 4:
        y.view(-1)[::4] = 0.0  # exact labels beside probabilities
        y.view(-1)[2::4] = 1.0
    w = torch.rand(wshape, generator=gen, dtype=torch.float64) if wshape else None
    pw = torch.rand(pwshape, generator=gen, dtype=torch.float64) * 3 if pwshape else None
    kw = dict(weight=w, reduction=reduction, pos_weight=pw)
    a, b, r = (x.clone().requires_grad_() for _ in range(3))
    ours = crossent.binary_cross_entropy_with_logits(a, y, **kw)
    theirs = TF.binary_cross_entropy_with_logits(b, y, **kw)
    ref = reference.binary_cross_entropy_with_logits(r, y, w, reduction, pw)
    assert_close(ours, theirs)
    assert_close(ours, ref)
    if x.numel():
        (ga,), (gb,), (gr,) = _grads(ours, [a]), _grads(theirs, [b]), _grads(ref, [r])
        assert_close(ga, gb)
        assert_close(ga, gr)


@pytest.mark.parametrize("shape, wshape, _", BCE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce(on_backend, shape, wshape, _, reduction):
    gen = torch.Generator().manual_seed(11)
    p = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    w = torch.rand(wshape, generator=gen, dtype=torch.float64) if wshape else None
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = crossent.binary_cross_entropy(a, y, w, reduction=reduction)
    theirs = TF.binary_cross_entropy(b, y, w, reduction=reduction)
    assert_close(ours, theirs)
    if p.numel():
        assert_close(_grads(ours, [a])[0], _grads(theirs, [b])[0])


def test_bce_clamps_the_log_at_minus_100_like_torch():
    p = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = crossent.binary_cross_entropy(a, y, reduction="none")
    theirs = TF.binary_cross_entropy(b, y, reduction="none")
    assert ours.tolist() == theirs.tolist() == [0.0, 0.0, 100.0, 100.0]
    ours.sum().backward()
    theirs.sum().backward()
    assert_close(a.grad, b.grad)  # torch's backward formula, eps-clamped denominator


def test_binary_target_gradient_matches_torch():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    pw = torch.rand(3, generator=gen, dtype=torch.float64) * 2
    ya, yb = y.clone().requires_grad_(), y.clone().requires_grad_()
    ours = crossent.binary_cross_entropy_with_logits(x, ya, pos_weight=pw)
    theirs = TF.binary_cross_entropy_with_logits(x, yb, pos_weight=pw)
    assert_close(torch.autograd.grad(ours, ya)[0], torch.autograd.grad(theirs, yb)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_binary_losses_low_precision(on_backend, dtype):
    gen = torch.Generator().manual_seed(13)
    x = (torch.randn(9, 4, generator=gen) * 3).to(dtype)
    y = torch.rand(9, 4, generator=gen).to(dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = crossent.binary_cross_entropy_with_logits(a, y)
    theirs = TF.binary_cross_entropy_with_logits(b, y)
    ref = reference.binary_cross_entropy_with_logits(x, y)
    assert ours.dtype == dtype
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    assert_close(_grads(ours, [a])[0], _grads(theirs, [b])[0], dtype)


# ---------------------------------------------------------------------------------------------
# The seeds' worked examples


def test_seed_binary_example():
    """y = 1, p = 0.9: -log(0.9) = 0.1054."""
    loss = crossent.binary_cross_entropy(torch.tensor([0.9]), torch.tensor([1.0]))
    assert round(loss.item(), 4) == 0.1054


def test_seed_multiclass_example():
    """Probabilities [0.2, 0.7, 0.1], true class 2 counted from 1 (one-hot [0, 1, 0]): 0.3567."""
    probs = torch.tensor([[0.2, 0.7, 0.1]])
    assert round(crossent.nll_loss(probs.log(), torch.tensor([1])).item(), 4) == 0.3567
    assert round(crossent.cross_entropy(probs.log(), torch.tensor([1])).item(), 4) == 0.3567
    assert round(crossent.cross_entropy(probs.log(), torch.tensor([[0.0, 1.0, 0.0]])).item(), 4) == 0.3567


def test_seed_pytorch_snippets_give_torchs_values():
    bce = crossent.nn.BCEWithLogitsLoss()(torch.tensor([2.0]), torch.tensor([1.0]))
    assert torch.equal(bce, torch.nn.BCEWithLogitsLoss()(torch.tensor([2.0]), torch.tensor([1.0])))
    assert round(bce.item(), 4) == 0.1269
    ce = crossent.nn.CrossEntropyLoss()(torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([1]))
    assert_close(ce, torch.nn.CrossEntropyLoss()(torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([1])))
    assert round(ce.item(), 4) == 0.4170


def test_every_public_combination_runs_on_empty_batches():
    for reduction, ls in itertools.product(["mean", "sum", "none"], [0.0, 0.1]):
        x = torch.randn(0, 4, requires_grad=True)
        ours = crossent.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=reduction, label_smoothing=ls)
        theirs = TF.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=reduction, label_smoothing=ls)
        assert_close(ours, theirs)
        ours.sum().backward()
