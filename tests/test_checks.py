"""Bad inputs as a table: (call, exception, message regex). Every message names the argument and value."""

from __future__ import annotations

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
    (lambda: CE(x, t, label_smoothing=float("nan")), ValueError, r"label_smoothing must be finite, got nan"),
    (lambda: CE(x, t, weight=torch.ones(4)), ValueError, r"weight must be a 1-D tensor with one entry per class \(5\), got shape \(4,\)"),
    (lambda: CE(x, t, weight=torch.ones(5, dtype=torch.long)), TypeError, r"weight must be a floating-point tensor, got dtype torch.int64"),
    (lambda: CE(x, t, weight=[1.0] * 5), TypeError, r"weight must be a torch.Tensor, got list"),
    (lambda: CE(x, t, ignore_index=1.5), TypeError, r"ignore_index must be an int, got 1.5"),
    (lambda: CE(x, t, z_loss=-1.0), ValueError, r"z_loss must be >= 0, got -1.0"),
    (lambda: CE(x, t, softcap=0.0), ValueError, r"softcap must be > 0 \(or None\), got 0.0"),
    (lambda: CE(x, t, softcap="big"), TypeError, r"softcap must be a number, got str 'big'"),
    (lambda: CE(x, t, inplace_backward=1), TypeError, r"inplace_backward must be True or False, got 1"),
    (lambda: CE(x.long(), t), TypeError, r"input must be a floating-point tensor, got dtype torch.int64"),
    (lambda: CE(torch.tensor(1.0), t), ValueError, r"input must have a class dimension"),
    (lambda: CE(x.numpy() if False else "logits", t), TypeError, r"input must be a torch.Tensor, got str"),
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
    (lambda: BCE(p, y, weight=torch.ones(3)), ValueError, r"weight of shape \(3,\) does not broadcast to the input's shape \(4, 5\)"),
    # binary_cross_entropy_with_logits
    (lambda: BCEL(x, y, pos_weight=torch.ones(4)), ValueError, r"pos_weight of shape \(4,\) does not broadcast .* one entry per class"),
    (lambda: BCEL(x, y.unsqueeze(0)), ValueError, r"target must have the input's shape \(4, 5\), got \(1, 4, 5\)"),
    (lambda: BCEL(x, y, reduction="mean "), ValueError, r"reduction must be .* got 'mean '"),
    # modules check at call time too
    (lambda: crossent.nn.CrossEntropyLoss(reduction="avg")(x, t), ValueError, r"got 'avg'"),
    (lambda: crossent.nn.CrossEntropyLoss(label_smoothing=2.0)(x, t), ValueError, r"label_smoothing must be in \[0, 1\], got 2.0"),
    # dispatch
    (lambda: crossent.use_backend("triton-magic").__enter__(), ValueError, r"use_backend: backend must be one of 'fused', 'torch', 'reference'.*got 'triton-magic'"),
]


@pytest.mark.parametrize("call, exc, pattern", ERRORS, ids=[f"case{i}" for i in range(len(ERRORS))])
def test_bad_input_raises_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_ignore_index_may_be_any_integer_including_a_valid_class():
    assert torch.isfinite(crossent.cross_entropy(x, t, ignore_index=3))
    assert torch.isfinite(crossent.cross_entropy(x, torch.tensor([0, 1, 77, 3]), ignore_index=77))


def test_environment_backend_is_validated_at_the_first_call(monkeypatch):
    from crossent import _dispatch

    monkeypatch.setattr(_dispatch, "_ENV_BACKEND", "nonsense")  # as if set before import
    with pytest.raises(ValueError, match="CROSSENT_BACKEND: backend must be one of"):
        crossent.cross_entropy(x, t)
    monkeypatch.setattr(_dispatch, "_ENV_BACKEND", "reference")
    assert crossent.cross_entropy(x, t).dtype == torch.float32


def test_environment_backend_set_before_import_is_honoured():
    import subprocess
    import sys

    code = "from crossent import _dispatch; print(_dispatch.forced().value)"
    env = {**__import__("os").environ, "CROSSENT_BACKEND": "fused"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "fused"
