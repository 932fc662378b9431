"""Bad inputs of log_probs and linear_log_probs as a table: (call, exception, message regex).
Every message names the function, the argument and the value."""

from __future__ import annotations

import pytest
import torch

import crossent

z = torch.randn(2, 3, 5)
t = torch.randint(0, 5, (2, 3))
x = torch.randn(4, 3)
w = torch.randn(6, 3)
tl = torch.tensor([0, 5, -100, 2])
LP, LLP = crossent.log_probs, crossent.linear_log_probs

ERRORS = [
    (lambda: LP(z, t, temperature=0.0), ValueError, r"log_probs: temperature must be > 0, got 0.0"),
    (lambda: LP(z, t, temperature=-1), ValueError, r"temperature must be > 0, got -1.0"),
    (lambda: LP(z, t, temperature=float("nan")), ValueError, r"temperature must be finite, got nan"),
    (lambda: LP(z, t, temperature="hot"), TypeError, r"temperature must be a number, got str 'hot'"),
    (lambda: LP(z, t, softcap=0.0), ValueError, r"log_probs: softcap must be > 0 \(or None\), got 0.0"),
    (lambda: LP(z, t, return_entropy=1), TypeError, r"return_entropy must be True or False, got 1"),
    (lambda: LP(z, t, ignore_index=1.5), TypeError, r"ignore_index must be an int, got float 1.5"),
    (lambda: LP(z, t.float()), TypeError, r"log_probs: target must hold class indices \(int64\) of shape \(2, 3\), got torch.float32"),
    (lambda: LP(z, t[:, :2]), ValueError, r"target of class indices must have shape \(2, 3\) \(input.shape\[:-1\]\) for input of shape \(2, 3, 5\), got \(2, 2\)"),
    (lambda: LP(z, t.int()), TypeError, r"target of class indices must be int64 or uint8.*got torch.int32"),
    (lambda: LP(z, torch.tensor([[0, 1, 5], [0, 0, 0]])), ValueError, r"log_probs: target contains 5 at index \(0, 2\), outside the classes \[0, 5\)"),
    (lambda: LP(z.long(), t), TypeError, r"log_probs: input must be a floating-point tensor, got dtype torch.int64"),
    (lambda: LP(torch.tensor(1.0), torch.tensor(0)), ValueError, r"log_probs: input must have shape \(\*, C\), got a 0-d tensor"),
    (lambda: LP(torch.randn(3, 0), torch.zeros(3, dtype=torch.long)), ValueError, r"log_probs: input has no classes"),
    (lambda: LP([1.0], t), TypeError, r"log_probs: input must be a torch.Tensor, got list"),
    (lambda: LLP(x, w, tl, linear_bias=torch.zeros(5)), ValueError, r"linear_log_probs: linear_bias must have shape \(6,\)"),
    (lambda: LLP(x, w[:, :2], tl), ValueError, r"linear_weight must have shape \(V, in_features\) with in_features = input.shape\[-1\] = 3, got \(6, 2\)"),
    (lambda: LLP(x, w.unsqueeze(1), tl), ValueError, r"linear_weight must have shape \(V, in_features\)"),
    (lambda: LLP(x, w.double(), tl), TypeError, r"linear_weight has dtype torch.float64 but input has dtype torch.float32"),
    (lambda: LLP(x, w, torch.tensor([0, 6, 1, 1])), ValueError, r"linear_log_probs: target contains 6 at index \(1,\), outside the classes \[0, 6\)"),
    (lambda: LLP(x, w, tl, chunk_size=0), ValueError, r"chunk_size must be >= 1 \(tokens per chunk\), got 0"),
    (lambda: LLP(x, w, tl, chunk_size=2.0), TypeError, r"chunk_size must be an int \(tokens per chunk\) or None, got 2.0"),
    (lambda: LLP(x, w, tl[:3]), ValueError, r"target of class indices must have shape \(4,\)"),
    (lambda: LLP(x, torch.randn(0, 3), tl), ValueError, r"linear_weight has no rows"),
    (lambda: LLP(x, w, tl, temperature=0), ValueError, r"linear_log_probs: temperature must be > 0, got 0.0"),
]


@pytest.mark.parametrize("call, exc, pattern", ERRORS, ids=[f"{i}" for i in range(len(ERRORS))])
def test_bad_input_raises_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_caller_tensors_are_not_modified():
    zz, xx, ww = z.clone().requires_grad_(), x.clone().requires_grad_(), w.clone().requires_grad_()
    versions = [zz._version, xx._version, ww._version]
    with crossent.use_backend("fused"):
        lp, h = LP(zz, t, return_entropy=True, softcap=3.0, temperature=0.5)
        (lp.sum() + h.sum()).backward()
        lp, h = LLP(xx, ww, tl, return_entropy=True, softcap=3.0)
        (lp.sum() + h.sum()).backward()
    assert [zz._version, xx._version, ww._version] == versions
    assert torch.equal(zz.detach(), z) and torch.equal(xx.detach(), x) and torch.equal(ww.detach(), w)
