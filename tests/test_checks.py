"""Bad inputs as a table: (call, exception, message regex). Every message names the argument and value."""

from __future__ import annotations

import contextlib
import inspect
import re

import pytest
import torch

import crossent

x = torch.randn(4, 5)
t = torch.tensor([0, 1, 2, 3])
p = torch.rand(4, 5)
y = torch.rand(4, 5)

CE = crossent.cross_entropy
NLL = crossent.nll_loss
BCE = crossent.binary_cross_entropy
BCEL = crossent.binary_cross_entropy_with_logits

ERRORS = [
    # cross_entropy
    (lambda: CE(x, t, reduction="avg"), ValueError, r"cross_entropy: reduction must be 'none', 'mean' or 'sum', got 'avg'"),
    (lambda: CE(x, torch.tensor([0, 1, 2, 5])), ValueError, r"target contains 5 at index \(3,\), outside the classes \[0, 5\) and not ignore_index=-100"),
    (lambda: CE(x, torch.tensor([0, -1, 2, 3])), ValueError, r"target contains -1 at index \(1,\)"),
    (lambda: CE(x, torch.tensor([0, 1, 2, 3]).float()), TypeError, r"target of class indices must be an integer tensor .* got torch.float32 of shape \(4,\)"),
    (lambda: CE(x, torch.tensor([0, 1, 2])), ValueError, r"target of class indices must have shape \(4,\) .* got \(3,\)"),
    (lambda: CE(x, torch.tensor([True, False, True, True])), TypeError, r"integer tensor"),
    (lambda: CE(x, t, label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: CE(x, t, label_smoothing=-0.1), ValueError, r"label_smoothing must be in \[0, 1\], got -0.1"),
    (lambda: CE(x, t, label_smoothing=float("nan")), ValueError, r"label_smoothing must be in \[0, 1\], got nan"),
    (lambda: CE(x, t, weight=torch.ones(4)), ValueError, r"weight must be a 1-D tensor with one entry per class \(5\), got shape \(4,\)"),
    (lambda: CE(x, t, weight=torch.ones(5, dtype=torch.long)), TypeError, r"weight must be a floating-point tensor, got dtype torch.int64"),
    (lambda: CE(x, t, weight=[1.0] * 5), TypeError, r"weight must be a torch.Tensor, got list"),
    (lambda: CE(x, t, ignore_index=1.5), TypeError, r"ignore_index must be an int, got float 1.5"),
    (lambda: CE(x, t, z_loss=-1.0), ValueError, r"z_loss must be >= 0, got -1.0"),
    (lambda: CE(x, t, softcap=0.0), ValueError, r"softcap must be > 0 \(or None\), got 0.0"),
    (lambda: CE(x, t, softcap="big"), TypeError, r"softcap must be a number, got str 'big'"),
    (lambda: CE(x, t, inplace_backward=1), TypeError, r"inplace_backward must be True or False, got 1"),
    (lambda: CE(x.long(), t), TypeError, r"input must be a floating-point tensor, got dtype torch.int64"),
    (lambda: CE(torch.tensor(1.0), t), ValueError, r"input must have a class dimension"),
    (lambda: CE("logits", t), TypeError, r"input must be a torch.Tensor, got str"),
    (lambda: CE(x, p, ignore_index=0), ValueError, r"ignore_index=0 cannot apply to class-probability targets"),
    (lambda: CE(torch.randn(1, 5).expand(4, 5).requires_grad_(), t, inplace_backward=True), ValueError, r"inplace_backward=True needs an input whose elements do not share memory"),
    (lambda: CE(x, t, reduction=None), ValueError, r"reduction must be 'none', 'mean' or 'sum', got None"),
    (lambda: CE(x, t, dtype=torch.float64), ValueError, r"cross_entropy: dtype=torch.float64 with a torch.float32 input; dtype may be None, the input's dtype, or torch.float32 for a float16/bfloat16 input"),
    (lambda: CE(x.bfloat16(), t, dtype=torch.float16), ValueError, r"dtype=torch.float16 with a torch.bfloat16 input"),
    (lambda: CE(x, t, dtype="float32"), TypeError, r"cross_entropy: dtype must be a torch.dtype or None, got 'float32'"),
    # nll_loss
    (lambda: NLL(x, torch.tensor([0, 1, 2, 9])), ValueError, r"nll_loss: target contains 9 at index \(3,\)"),
    (lambda: NLL(x, t, reduction="total"), ValueError, r"nll_loss: reduction must be .* got 'total'"),
    # binary_cross_entropy
    (lambda: BCE(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0])), ValueError, r"binary_cross_entropy: input must hold probabilities in \[0, 1\], got 1.5 at index \(1,\)"),
    (lambda: BCE(torch.tensor([0.5, float("nan")]), torch.tensor([1.0, 0.0])), ValueError, r"got nan at index \(1,\)"),
    (lambda: BCE(p, y[:, :3]), ValueError, r"binary_cross_entropy: target must have the input's shape \(4, 5\), got \(4, 3\)"),
    (lambda: BCE(p, (y > 0.5)), TypeError, r"target must be a floating-point tensor .* got torch.bool"),
    (lambda: BCE(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.5])), ValueError, r"binary_cross_entropy: target must hold probabilities in \[0, 1\], got 1.5 at index \(1,\)"),
    (lambda: BCE(torch.rand(600, 2000), torch.rand(600, 2000) * 2 - 0.5), ValueError, r"target must hold probabilities in \[0, 1\]"),
    (lambda: BCE(p, y, weight=torch.ones(3)), ValueError, r"weight of shape \(3,\) does not broadcast to the input's shape \(4, 5\)"),
    # binary_cross_entropy_with_logits
    (lambda: BCEL(x, y, pos_weight=torch.ones(4)), ValueError, r"pos_weight of shape \(4,\) does not broadcast .* one entry per class"),
    (lambda: BCEL(x, y.unsqueeze(0)), ValueError, r"target must have the input's shape \(4, 5\), got \(1, 4, 5\)"),
    (lambda: BCEL(x, y, reduction="mean "), ValueError, r"reduction must be .* got 'mean '"),
    # modules check at call time too
    (lambda: crossent.nn.CrossEntropyLoss(reduction="avg")(x, t), ValueError, r"got 'avg'"),
    (lambda: crossent.nn.CrossEntropyLoss(label_smoothing=2.0)(x, t), ValueError, r"label_smoothing must be in \[0, 1\], got 2.0"),
    # dispatch
    (lambda: crossent.use_backend("triton-magic").__enter__(), ValueError, r"use_backend: backend must be one of 'fused', 'torch', 'composite', 'reference'.*got 'triton-magic'"),
    # class weights of another dtype: torch refuses them ("expected scalar type"), on every path
    (lambda: CE(x, t, weight=torch.ones(5, dtype=torch.float64)), TypeError, r"cross_entropy: weight has dtype torch.float64 but input has dtype torch.float32"),
    (lambda: CE(torch.randn(64, 20000, requires_grad=True), torch.zeros(64, dtype=torch.long), weight=torch.ones(20000, dtype=torch.float64)), TypeError, r"weight has dtype torch.float64"),
    (lambda: NLL(x, t, weight=torch.ones(5, dtype=torch.float64)), TypeError, r"nll_loss: weight has dtype torch.float64"),
]


def _ids(table, prefix=""):
    """Each case named by what its message says (the pattern's words), unique."""
    ids = []
    for _, exc, pattern in table:
        words = re.sub(r"\\.|[^A-Za-z0-9_]+", " ", pattern).split()
        name = prefix + exc.__name__ + "-" + "-".join(words[:10])
        while name in ids:
            name += "'"
        ids.append(name)
    return ids


@pytest.mark.parametrize("call, exc, pattern", ERRORS, ids=_ids(ERRORS))
def test_bad_input_raises_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# linear_cross_entropy, on the fused path and on the route that tries torch first (auto)
LCE = crossent.linear_cross_entropy
xl = torch.randn(4, 3)
wl = torch.randn(6, 3)
bl = torch.randn(6)
tl = torch.tensor([0, 1, 2, 5])
pl = torch.rand(4, 6).softmax(-1)

LINEAR_ERRORS = [
    (lambda: LCE(xl, wl[:, :2], tl), ValueError,
     r"linear_cross_entropy: linear_weight must have shape \(C, in_features\) or \(C, d1, ..., dk, in_features\) with in_features = input.shape\[-1\] = 3, got linear_weight of shape \(6, 2\)"),
    (lambda: LCE(xl, wl[0], tl), ValueError, r"linear_weight must have shape .* got linear_weight of shape \(3,\)"),
    (lambda: LCE(xl.unsqueeze(0), wl, tl.unsqueeze(0)), ValueError,
     r"input must have shape \(in_features,\) or \(N, in_features\), as in torch, got shape \(1, 4, 3\); flatten the leading dimensions: input.reshape\(-1, 3\)"),
    (lambda: LCE(xl[0], wl.unsqueeze(1), tl[0]), ValueError, r"K-dimensional loss defined by linear_weight of shape \(6, 1, 3\) requires batched input"),
    (lambda: LCE(xl, wl, tl[:3]), ValueError,
     r"target of class indices must have shape \(4,\) for input of shape \(4, 3\) and linear_weight of shape \(6, 3\), got \(3,\)"),
    (lambda: LCE(xl, wl.unsqueeze(1).expand(6, 2, 3), tl), ValueError, r"target of class indices must have shape \(4, 2\)"),
    (lambda: LCE(xl, wl, tl.float()), TypeError,
     r"target of class indices must be an integer tensor \(int64\) of shape \(4,\), got torch.float32"),
    (lambda: LCE(xl, wl, pl[:, :5]), TypeError, r"class probabilities need a floating target of the logits' shape \(4, 6\)"),
    (lambda: LCE(xl, wl, torch.zeros(4, 6, dtype=torch.long)), TypeError, r"a target of the logits' shape \(4, 6\) holds class probabilities and must be floating-point, got torch.int64"),
    (lambda: LCE(xl, wl, torch.tensor([0, 1, 6, 2])), ValueError,
     r"linear_cross_entropy: target contains 6 at index \(2,\), outside the classes \[0, 6\)"),
    (lambda: LCE(xl, wl, torch.tensor([0, -3, 1, 2])), ValueError, r"target contains -3 at index \(1,\)"),
    (lambda: LCE(xl, wl, pl, ignore_index=-100), ValueError, r"ignore_index=-100 cannot be specified when target contains class probabilities"),
    (lambda: LCE(xl, wl, tl, ignore_index=1.5), TypeError, r"ignore_index must be an int, got float 1.5"),
    (lambda: LCE(xl, wl.double(), tl), TypeError, r"linear_weight has dtype torch.float64 but input has dtype torch.float32"),
    (lambda: LCE(xl, wl, tl, linear_bias=bl.half()), TypeError, r"linear_bias has dtype torch.float16 but input has dtype torch.float32"),
    (lambda: LCE(xl, wl, tl, linear_bias=bl[:5]), ValueError, r"linear_bias must have shape \(6,\), one entry per row of linear_weight, got \(5,\)"),
    (lambda: LCE(xl, wl.to("meta"), tl), ValueError, r"linear_weight is on meta but input is on cpu"),
    (lambda: LCE(xl, wl, tl, linear_bias=bl.to("meta")), ValueError, r"linear_bias is on meta but input is on cpu"),
    (lambda: LCE(xl, wl, tl.to("meta")), ValueError, r"target is on meta but input is on cpu"),
    (lambda: LCE(xl.long(), wl, tl), TypeError, r"input must be a floating-point tensor, got dtype torch.int64"),
    (lambda: LCE(torch.tensor(1.0), wl, tl), ValueError, r"input must have shape \(in_features,\) or \(N, in_features\)"),
    (lambda: LCE(xl, "W", tl), TypeError, r"linear_weight must be a torch.Tensor, got str"),
    (lambda: LCE(xl, wl, tl, weight=torch.ones(5)), ValueError, r"weight must be a 1-D tensor with one entry per class \(6\), got shape \(5,\)"),
    (lambda: LCE(xl, wl, tl, weight=torch.ones(6, dtype=torch.float64)), TypeError, r"weight has dtype torch.float64 but input has dtype torch.float32"),
    (lambda: LCE(xl, wl, tl, weight=torch.ones(6, requires_grad=True), z_loss=1e-3), ValueError,
     r"weight requires grad, but torch does not differentiate linear_cross_entropy with respect to weight"),
    (lambda: LCE(xl, wl, pl.clone().requires_grad_(), z_loss=1e-3), ValueError, r"target requires grad"),
    (lambda: LCE(xl, wl, tl, reduction="avg"), ValueError, r"reduction must be 'none', 'mean' or 'sum', got 'avg'"),
    (lambda: LCE(xl, wl, tl, reduction="sum", normalizer=4), ValueError,
     r"normalizer=4.0 replaces the denominator of reduction='mean', got reduction='sum'"),
    (lambda: LCE(xl, wl, tl, normalizer=0), ValueError, r"normalizer must be > 0 \(or None\), got 0.0"),
    (lambda: LCE(xl, wl, tl, normalizer=torch.ones(2)), ValueError, r"normalizer must be a number or a one-element tensor"),
    (lambda: LCE(xl, wl, tl, chunk_size=0), ValueError, r"chunk_size must be >= 1 \(rows per chunk\), got 0"),
    (lambda: LCE(xl, wl, tl, chunk_size=2.5), TypeError, r"chunk_size must be an int \(rows per chunk\) or None, got 2.5"),
    (lambda: LCE(xl, wl, tl, options="fast"), TypeError, r"options must be a torch.nn.LinearCrossEntropyOptions or None, got str"),
    (lambda: LCE(xl, wl, tl, label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: LCE(xl, wl, tl, softcap=-1.0), ValueError, r"softcap must be > 0 \(or None\), got -1.0"),
    (lambda: LCE(xl, wl, tl, z_loss=-1), ValueError, r"z_loss must be >= 0, got -1.0"),
    (lambda: LCE(xl, wl, tl, dtype=torch.float64), ValueError, r"linear_cross_entropy: dtype=torch.float64 with a torch.float32 input"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(3, 6, reduction="avg")(xl, tl), ValueError, r"got 'avg'"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(3, 6, weight=torch.ones(5)), ValueError, r"LinearCrossEntropyLoss: weight must be a 1-D tensor with one entry per class \(6\)"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(3, 6, label_smoothing=-0.5), ValueError, r"LinearCrossEntropyLoss: label_smoothing must be in \[0, 1\], got -0.5"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(3, 0), ValueError, r"LinearCrossEntropyLoss: num_classes must be a positive int, got 0"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(3, 6, out_features=(2, 0)), ValueError, r"out_features must be a tuple of positive ints, got \(2, 0\)"),
]


@pytest.mark.parametrize("route", [crossent.Backend.FUSED, None])  # None: the rule (torch first)
@pytest.mark.parametrize("call, exc, pattern", LINEAR_ERRORS, ids=_ids(LINEAR_ERRORS, "linear-"))
def test_linear_bad_input_raises_a_clear_error(call, exc, pattern, route):
    with crossent.use_backend(route) if route else contextlib.nullcontext():
        with pytest.raises(exc, match=pattern):
            call()


@pytest.mark.parametrize("backend", [None, crossent.Backend.FUSED, crossent.Backend.COMPOSITE])
def test_ignore_index_may_be_any_integer_including_a_valid_class(backend):
    xg = torch.randn(64, 50, dtype=torch.float64)
    for target, ignore in ((torch.randint(0, 50, (64,)), 3), (torch.randint(0, 50, (64,)), 77), (torch.randint(0, 50, (64,)), -3)):
        target[::5] = ignore
        with crossent.use_backend(backend) if backend else contextlib.nullcontext():
            ours = crossent.cross_entropy(xg, target, ignore_index=ignore)
        torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(xg, target, ignore_index=ignore))


def test_environment_backend_is_validated_at_the_first_call(monkeypatch):
    from crossent import _backends

    monkeypatch.setattr(_backends, "ENV_BACKEND", "nonsense")  # as if set before import
    with pytest.raises(ValueError, match="CROSSENT_BACKEND: backend must be one of"):
        crossent.cross_entropy(x, t)
    monkeypatch.setattr(_backends, "ENV_BACKEND", "reference")
    assert crossent.cross_entropy(x, t).dtype == torch.float32


def test_environment_backend_set_before_import_is_honoured():
    import subprocess
    import sys

    code = "from crossent import _dispatch; print(_dispatch.forced().value)"
    env = {**__import__("os").environ, "CROSSENT_BACKEND": "fused"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "fused"


# Where torch refuses an argument too, crossent's error is also of torch's exception type
# (RuntimeError for TORCH_CHECK failures, IndexError for out-of-range targets), so code written
# against torch's losses catches it.
SAME_KIND = [
    lambda m: m.cross_entropy(x, torch.tensor([0, 1, 2, 9])),
    lambda m: m.cross_entropy(x, torch.tensor([0, 1, 2])),
    lambda m: m.cross_entropy(x, t, weight=torch.ones(5, dtype=torch.float64)),
    lambda m: m.cross_entropy(x, t, weight=torch.ones(4)),
    lambda m: m.cross_entropy(x, p, ignore_index=0),
    lambda m: m.nll_loss(x, torch.tensor([0, 1, 2, 9])),
    lambda m: m.binary_cross_entropy(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0])),
    lambda m: m.binary_cross_entropy(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.5])),
    lambda m: m.linear_cross_entropy(xl.unsqueeze(0), wl, tl.unsqueeze(0)),
    lambda m: m.linear_cross_entropy(xl, wl, pl, ignore_index=-100),
    lambda m: m.linear_cross_entropy(xl, wl.double(), tl),
    lambda m: m.linear_cross_entropy(xl, wl, tl, linear_bias=bl[:5]),
]


@pytest.mark.parametrize("call", SAME_KIND, ids=lambda call: inspect.getsource(call).strip().split("m.", 1)[1][:60].rstrip(",)"))
def test_errors_are_of_torchs_exception_type_too(call):
    """On a torch without F.linear_cross_entropy (< 2.13) crossent's linear loss keeps torch
    2.13's contract: the RuntimeError that 2.13 raises for each linear call above (checked
    against torch itself on 2.13 and newer)."""
    if "linear_cross_entropy" in inspect.getsource(call) and not hasattr(torch.nn.functional, "linear_cross_entropy"):
        expected = RuntimeError
    else:
        with pytest.raises(Exception) as theirs:
            call(torch.nn.functional)
        expected = type(theirs.value)
    with pytest.raises(expected):
        call(crossent)
