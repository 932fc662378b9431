"""The Triton backend's backward: two passes over the logits in all (forward reads them and writes
the gradient already scaled by 'mean''s 1/den; backward's scale kernel reads grad_output on the
device and does nothing when it is 1), no host read of a device value, and the scale kernel
itself over every layout it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close, skip_without_triton

skip_without_triton()


@pytest.fixture
def launches(monkeypatch):
    """The names of the Triton kernels launched, in order."""
    from crossent.backends.triton import ops

    names = []
    modules = ops._kernels()

    class Recorder:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            names.append(self.name)
            return self.kernel[grid]

    class Module:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            attr = getattr(self.module, name)
            return Recorder(attr, name) if name.endswith("_kernel") else attr

    monkeypatch.setattr(ops, "_kernels", lambda: tuple(Module(m) for m in modules))
    return names


@pytest.fixture
def no_host_reads(monkeypatch):
    """Fail on any read of a tensor's value by the host (a sync on a GPU) while active."""
    state = {"on": False}

    def guard(name, original):
        def read(self, *args, **kwargs):
            if state["on"]:
                raise AssertionError(f"host read in backward: Tensor.{name}")
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    return state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mean_is_one_kernel_pass_and_a_scale_kernel_that_reads_one(launches, no_host_reads, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 40, generator=gen) * 3).to(dtype).requires_grad_()
    t = torch.randint(0, 40, (6,), generator=gen)
    t[1] = -100
    with crossent.use_backend("triton"):
        loss = crossent.cross_entropy(x, t)
    assert launches == ["ce_kernel"]  # loss and the scaled gradient: one read, one write
    no_host_reads["on"] = True
    loss.backward()
    no_host_reads["on"] = False
    assert launches == ["ce_kernel", "scale_kernel"]
    xt = x.detach().clone().requires_grad_()
    F.cross_entropy(xt, t).backward()
    assert_close(x.grad, xt.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_other_than_one_is_applied_on_the_device(no_host_reads, reduction):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 37, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, 37, (5,), generator=gen)
    go = torch.tensor(2.5, dtype=torch.float64)
    with crossent.use_backend("triton"):
        loss = crossent.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
    no_host_reads["on"] = True
    (g,) = torch.autograd.grad(loss, x, go)
    no_host_reads["on"] = False
    xt = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(F.cross_entropy(xt, t, reduction=reduction, label_smoothing=0.1), xt, go)
    assert_close(g, want)


def test_retain_graph_and_double_backward_unchanged():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 37, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, 37, (4,), generator=gen)
    xt = x.detach().clone().requires_grad_()
    with crossent.use_backend("triton"):
        loss = crossent.cross_entropy(x, t)
    want = torch.autograd.grad(F.cross_entropy(xt, t), xt, create_graph=True)[0]
    first = torch.autograd.grad(loss, x, torch.tensor(3.0, dtype=torch.float64), retain_graph=True)[0]
    second = torch.autograd.grad(loss, x, retain_graph=True)[0]
    assert_close(first, 3 * want.detach())
    assert_close(second, want.detach())
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert_close(torch.autograd.grad((g * v).sum(), x)[0], torch.autograd.grad((want * v).sum(), xt)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1, 15, 16, 100])
def test_scale_kernel(monkeypatch, dtype, numel):
    """g *= f in place over whole blocks streamed by fewer programs than blocks, and the tail;
    f == 1 leaves every bit (nan and -0.0 included) as it was."""
    from crossent.backends.triton import ops, schedule

    monkeypatch.setattr(ops, "SCALE_BLOCK", 16)
    monkeypatch.setattr(schedule, "scale_programs", lambda blocks, device: 2)
    gen = torch.Generator().manual_seed(numel)
    g0 = torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype)
    g0[0] = -0.0
    if numel > 2:
        g0[2] = float("nan")
    g = g0.clone()
    assert ops.scale_grad_(g, torch.ones(())) is g
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    assert torch.equal(g.view(bits), g0.view(bits))
    f = torch.tensor([0.3], dtype=torch.float64)
    ops.scale_grad_(g, f)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    want = (g0.to(acc) * f.to(acc)).to(dtype)
    if dtype.itemsize == 2:  # (Triton's interpreter rounds to 16 bits toward zero: 1 ulp)
        torch.testing.assert_close(g, want, equal_nan=True)
    else:
        assert torch.equal(g.isnan(), want.isnan()) and torch.equal(g.nan_to_num(), want.nan_to_num())


def test_scale_kernel_non_contiguous_falls_back_to_torch():
    from crossent.backends.triton import ops

    g = torch.arange(12.0).view(3, 4).t()
    ops.scale_grad_(g, torch.tensor(2.0))
    assert torch.equal(g, 2 * torch.arange(12.0).view(3, 4).t())


@pytest.mark.parametrize("loop", [False, True], ids=["one-block", "loop"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "probs"])
def test_gradient_from_saved_statistics_equals_forwards(request, loop, soft):
    """launch_ce_grad (the gradient alone, from launch_ce's row statistics) writes the bits
    launch_ce wrote with the loss, every option on."""
    from crossent._options import LossOptions
    from crossent.backends import rows
    from crossent.backends.triton import ops

    if loop:
        request.getfixturevalue("small_blocks")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 37, generator=gen) * 3
    opts = LossOptions(label_smoothing=0.1, z_loss=1e-3, softcap=4.0, soft=soft)
    weight = torch.rand(37, generator=gen) + 0.1
    index = None if soft else torch.randint(0, 37, (5,), generator=gen)
    probs = torch.rand(5, 37, generator=gen).softmax(1) if soft else None
    tg = rows.targets(index, probs, weight, opts, torch.float32, num_classes=37)
    scale = torch.rand(5, generator=gen) + 0.5
    g1, g2 = torch.empty_like(x), torch.empty_like(x)
    _, stats = ops.launch_ce(x, tg, opts, grad=g1, scale=scale)
    ops.launch_ce_grad(x, tg, opts, stats, grad=g2, scale=scale)
    assert torch.equal(g1, g2)
