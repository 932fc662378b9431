"""Shared by the linear cross-entropy tests: problems, the unfused composition, gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close


def unfused(x, w, t, b=None, *, ce=crossent.cross_entropy, weight=None, normalizer=None,
            reduction="mean", ignore_index=None, **kw):
    """The contract of linear_cross_entropy, literally: the full logits, then cross-entropy.
    w may be K-dimensional, (V, d1..dk, D): logits (N, V, d1..dk), as torch builds them."""
    v, d = w.shape[0], w.shape[-1]
    out = tuple(w.shape[1:-1])
    logits = F.linear(x, w.reshape(-1, d), b.reshape(-1) if b is not None else None)
    logits = logits.reshape(*x.shape[:-1], v, *out)
    red = "sum" if normalizer is not None else reduction
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    loss = ce(logits, t, weight=weight, reduction=red, **kw)
    return loss / normalizer if normalizer is not None else loss


def make(n, d, v, dtype=torch.float32, *, heads=(), soft=False, bias=True, ignored=0.25, seed=0,
         unbatched=False):
    """input (N, D) (or (D,)), linear_weight (V, *heads, D), linear_bias (V, *heads), targets with
    a fraction ignored (-100): class indices (N, *heads) or probabilities (N, V, *heads)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, *heads, d, generator=gen, dtype=torch.float64) * (2.0 / d**0.5)
    b = torch.randn(v, *heads, generator=gen, dtype=torch.float64) if bias else None
    if soft:
        t = (torch.randn(n, v, *heads, generator=gen, dtype=torch.float64) * 2).softmax(1)
    else:
        t = torch.randint(0, v, (n, *heads), generator=gen)
        if ignored and t.numel():
            t[torch.rand(t.shape, generator=gen) < ignored] = -100
    if unbatched:
        x, t = x[0], t[0]
    cast = (lambda a: a.to(dtype)) if dtype != torch.float64 else (lambda a: a)
    return cast(x), cast(w), (cast(b) if b is not None else None), (cast(t) if soft else t)


def grads(loss, tensors, grad_out):
    return torch.autograd.grad(loss, [a for a in tensors if a is not None], grad_out)


def leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def grad_output(loss, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if loss.dim() == 0:
        return torch.tensor(0.7, dtype=loss.dtype)
    return torch.rand(loss.shape, generator=gen, dtype=torch.float64).to(loss.dtype) + 0.25


def class_weight(v, dtype, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(v, generator=gen, dtype=torch.float64) + 0.2).to(dtype)


def logits_count(n, w):
    return n * math.prod(w.shape[:-1])


# ---------------------------------------------------------------- the parity grid, shared by
# the fused and the Triton backends' tests

HARD = {
    "plain": {},
    "ignore_valid_class": {"ignore_index": 3},
    "smoothing": {"label_smoothing": 0.1},
    "weight": {"weight": True},
    "smoothing+weight": {"label_smoothing": 0.2, "weight": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 3.0},
    "everything": {"label_smoothing": 0.1, "weight": True, "z_loss": 1e-3, "softcap": 5.0},
}
SOFT = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "weight": {"weight": True},
    "smoothing+weight": {"label_smoothing": 0.2, "weight": True},
    "z_loss+softcap": {"z_loss": 1e-2, "softcap": 4.0},
}
TORCH_HAS = {"ignore_index", "label_smoothing", "weight"}


def resolve(opts, v, dtype):
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = class_weight(v, dtype)
    return opts


def check_parity(n, d, v, dtype, opts, reduction, soft, bias, *, heads=(), chunk_size=None,
                 normalizer=None):
    x, w, b, t = make(n, d, v, dtype, heads=heads, soft=soft, bias=bias, seed=n + v)
    if opts.get("ignore_index", -100) != -100 and not soft:
        t[t == -100] = opts["ignore_index"]  # a valid class, ignored wherever it occurs
    kw = dict(resolve(opts, v, dtype), reduction=reduction)
    if normalizer is not None:
        kw["normalizer"] = normalizer
    xa, wa, ba = leaves(x, w, b)
    xr, wr, br = leaves(x, w, b)
    ours = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, chunk_size=chunk_size, **kw)
    ref = unfused(xr, wr, t, br, **kw)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert_close(ours, ref)
    go = grad_output(ours)
    g_ours = grads(ours, (xa, wa, ba), go)
    for g, g_ref in zip(g_ours, grads(ref, (xr, wr, br), go)):
        assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
        assert_close(g, g_ref)
    if normalizer is None and set(opts) <= TORCH_HAS:  # and torch's own composition
        xt, wt, bt = leaves(x, w, b)
        theirs = unfused(xt, wt, t, bt, ce=F.cross_entropy, **kw)
        assert_close(ours, theirs)
        for g, g_t in zip(g_ours, grads(theirs, (xt, wt, bt), go)):
            assert_close(g, g_t)
