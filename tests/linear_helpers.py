"""Shared by the linear cross-entropy tests: problems, the unfused composition, gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import crossent


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
