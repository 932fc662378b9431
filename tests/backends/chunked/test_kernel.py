"""The fused chunk kernel against the float64 reference, across chunk boundaries and layouts,
and its determinism guarantee (run to run and across thread counts)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import crossent
from conftest import assert_close
from crossent import reference
from crossent.backends import common
from crossent.backends.chunked import kernel


@pytest.fixture(params=[7, 64, 1 << 16], ids=["chunk7", "chunk64", "chunk64K"])
def chunk(request, monkeypatch):
    """Small chunks force many chunk boundaries, rows split across chunks, K-dim split along D."""
    monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("shape", [(13, 6), (3, 6, 11), (2, 6, 5, 3), (1, 300), (6,)])
@pytest.mark.parametrize("opts", [
    {},
    dict(label_smoothing=0.2, weighted=True),
    dict(z_loss=1e-2, softcap=4.0, reduction="none"),
    dict(reduction="sum", ignore_index=2, weighted=True, label_smoothing=0.1, z_loss=1e-3),
])
@pytest.mark.parametrize("soft", [False, True])
def test_chunked_kernel_matches_reference(chunk, shape, opts, soft):
    opts = dict(opts)
    gen = torch.Generator().manual_seed(len(shape) * 7 + chunk)
    dim = 0 if len(shape) == 1 else 1
    C = shape[dim]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    weighted = opts.pop("weighted", False)
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.2 if weighted else None
    if soft:
        if opts.get("ignore_index", -100) >= 0:
            opts.pop("ignore_index")
        t = torch.randn(shape, generator=gen, dtype=torch.float64).softmax(dim)
    else:
        tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = torch.randint(0, C, tshape, generator=gen)
        if t.dim():
            t.view(-1)[::4] = opts.get("ignore_index", -100)
    a, r = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = crossent.cross_entropy(a, t, w, **opts)
    ref = reference.cross_entropy(r, t, w, **opts)
    assert_close(ours, ref)
    go = torch.rand(ours.shape, generator=gen, dtype=torch.float64)
    assert_close(torch.autograd.grad(ours, a, go)[0], torch.autograd.grad(ref, r, go)[0])


def test_forward_only_keeps_no_gradient_buffer():
    """Under no_grad (or for inputs without requires_grad) nothing of gradient size is computed."""
    x = torch.randn(64, 1000, requires_grad=True)
    t = torch.randint(0, 1000, (64,))
    with torch.no_grad():
        loss = crossent.cross_entropy(x, t)
    assert loss.grad_fn is None
    loss = crossent.cross_entropy(x.detach(), t)
    assert loss.grad_fn is None
    # With a gradient, the fused graph holds exactly one gradient-sized tensor.
    with crossent.use_backend("fused"):
        loss = crossent.cross_entropy(x, t)
    assert [g.shape for g in loss.grad_fn.grads] == [x.shape]


def test_deterministic_sum_is_independent_of_thread_count():
    v = torch.randn(1_000_003, dtype=torch.float32)
    old = torch.get_num_threads()
    try:
        sums = set()
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            sums.add(common.deterministic_sum(v).item())
    finally:
        torch.set_num_threads(old)
    assert len(sums) == 1


_DETERMINISM_SCRIPT = r"""
import hashlib, sys, torch, crossent
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
h = hashlib.sha256()
def feed(t):  # the exact bits of a float32 tensor
    bits = t.detach().contiguous().reshape(-1).view(torch.int32)
    h.update(repr(bits.tolist()).encode())
for shape, C in [((257, 3001), 3001), ((1, 100000), 100000), ((3, 7, 4000), 7)]:
    x = (torch.randn(shape, generator=g) * 4).requires_grad_()
    t = torch.randint(0, C, (shape[0],) + shape[2:], generator=g)
    for kw in ({}, dict(label_smoothing=0.1, z_loss=1e-3), dict(reduction="sum", softcap=10.0)):
        loss = crossent.cross_entropy(x, t, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        feed(loss)
        feed(grad)
# mid sizes that dispatch routes to torch's kernels (class indices; probability targets)
q = (torch.randn(300, 400, generator=g)).requires_grad_()
for target in (torch.randint(0, 400, (300,), generator=g), torch.rand(300, 400, generator=g).softmax(1)):
    loss = crossent.cross_entropy(q, target, label_smoothing=0.1)
    feed(loss)
    feed(torch.autograd.grad(loss, q)[0])
y = (torch.randn(300, 400, generator=g)).requires_grad_()
p = torch.rand(300, 400, generator=g)
loss = crossent.binary_cross_entropy_with_logits(y, p, pos_weight=torch.rand(400, generator=g))
feed(loss)
feed(torch.autograd.grad(loss, y)[0])
print(h.hexdigest())
"""


def test_bitwise_deterministic_across_runs_and_thread_counts():
    digests = set()
    for threads in (1, 2, 3, 1):
        out = subprocess.run(
            [sys.executable, "-c", _DETERMINISM_SCRIPT, str(threads)],
            capture_output=True, text=True, check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


@pytest.mark.parametrize("opts", [
    dict(softcap=30.0), dict(softcap=30.0, label_smoothing=0.1, z_loss=1e-4, weighted=True),
], ids=["softcap", "softcap+smoothing+z_loss+weights"])
def test_bfloat16_gradients_as_accurate_as_float32_rounded_once(opts):
    """64 x 32000 (the fused path): crossent's bfloat16 gradient is the float32 computation rounded
    once, so its error against float64 is that of torch's float32-then-round composition."""
    opts = dict(opts)
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(64, 32000, generator=gen) * 8).bfloat16()
    t = torch.randint(0, 32000, (64,), generator=gen)
    w = (torch.rand(32000, generator=gen) + 0.5).bfloat16() if opts.pop("weighted", False) else None

    def grad(fn, xin, win, **kw):
        xi = xin.clone().requires_grad_()
        fn(xi, t, win, **opts, **kw).backward()
        return xi.grad.double()

    g64 = grad(reference.cross_entropy, x.double(), None if w is None else w.double())
    g32 = grad(reference.cross_entropy, x.float(), None if w is None else w.float(), precision=torch.float32)
    g32 = g32.bfloat16().double()
    with crossent.use_backend(crossent.Backend.FUSED):
        ours = grad(crossent.cross_entropy, x, w)
    l1 = lambda g: ((g - g64).abs().sum() / g64.abs().sum()).item()
    assert l1(ours) <= 1.05 * l1(g32), (l1(ours), l1(g32))


@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 2, 4), (3, 3, 8), (2, 7, 16), (1, 1000, 16), (2, 1001, 5),
                                   (4, 32000, 8), (2, 33, 17), (3, 64, 1)])
def test_class_max_is_amax_bit_for_bit(shape):
    """The tree of maxima over the classes (K-dim chunks of at most TREE_MAX_POSITIONS positions)
    gives amax's values exactly, nan and infinities included, for odd and even class counts."""
    gen = torch.Generator().manual_seed(sum(shape))
    z = torch.randn(shape, generator=gen)
    if shape[1] > 3:
        z[0, shape[1] - 1, 0] = float("nan")
        z[-1, shape[1] // 2, -1] = float("inf")
        z[-1, :, 0] = float("-inf")
    before = z.clone()
    got, want = kernel.class_max(z), z.amax(1, keepdim=True)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert torch.equal(z.isnan(), before.isnan()) and torch.equal(z.nan_to_num(), before.nan_to_num())  # not written
