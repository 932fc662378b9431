"""torch.compile keeps the Triton cross-entropy kernel: the dispatch hands the traced call to the
custom op crossent::cross_entropy_triton (backends/loops/cross_entropy_op.py) instead of the
composite formulas; values and gradients equal the eager fused path's."""

from __future__ import annotations

import pytest
import torch

import crossent
from conftest import assert_close, skip_without_triton

skip_without_triton()


@pytest.mark.parametrize("kw", [
    {}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none"}, {"reduction": "sum", "softcap": 5.0},
], ids=["mean", "none-everything", "sum-softcap"])
def test_compiled_cross_entropy_runs_the_triton_kernel(monkeypatch, kw):
    from crossent.backends.triton import ops

    launched = []
    real = ops.launch_ce
    monkeypatch.setattr(ops, "launch_ce", lambda *a, **k: launched.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 37, generator=gen, dtype=torch.float64) * 3
    t = torch.randint(0, 37, (6,), generator=gen)
    t[2] = -100
    f = torch.compile(lambda x, t: crossent.cross_entropy(x, t, **kw), fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        got = f(xc, t)
        assert launched  # (the composite formulas launch no Triton kernel)
        want = crossent.cross_entropy(xe, t, **kw)
    assert_close(got, want)
    go = torch.rand(got.shape, generator=gen, dtype=torch.float64) + 0.5
    assert_close(torch.autograd.grad(got, xc, go)[0], torch.autograd.grad(want, xe, go)[0])


def test_compiled_probability_targets_and_kdim():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 37, 2, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 37, 2, generator=gen, dtype=torch.float64).softmax(1)
    f = torch.compile(lambda x, p: crossent.cross_entropy(x, p, label_smoothing=0.2), fullgraph=True,
                      backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        got = f(xc, p)
        want = crossent.cross_entropy(xe, p, label_smoothing=0.2)
    assert_close(got, want)
    assert_close(torch.autograd.grad(got, xc)[0], torch.autograd.grad(want, xe)[0])


# ---------------------------------------------------------------- the binary losses' custom ops

BINARY_CASES = {
    "logits-mean-weights": (True, {"weight": (5,), "pos_weight": (5,)}, "mean"),
    "logits-none-broadcast": (True, {"weight": (4, 1)}, "none"),
    "logits-sum-plain": (True, {}, "sum"),
    "probs-mean-weight": (False, {"weight": (5,)}, "mean"),
    "probs-none": (False, {}, "none"),
}


def _binary_inputs(logits, shapes, dtype=torch.float64, seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3
    x = x if logits else x.sigmoid()
    y = torch.rand(4, 5, generator=gen, dtype=torch.float64)
    kw = {k: (torch.rand(s, generator=gen, dtype=torch.float64) + 0.5).to(dtype) for k, s in shapes.items()}
    return x.to(dtype), y.to(dtype), kw


def _binary_fn(logits):
    return crossent.binary_cross_entropy_with_logits if logits else crossent.binary_cross_entropy


def _recording_aot():
    """torch.compile's AOT-autograd backend (as aot_eager) that records the forward graph's ops."""
    from torch._dynamo.backends.common import aot_autograd

    ops = []

    def forward(gm, _):
        ops.extend(str(n.target) for n in gm.graph.nodes)
        return gm

    return aot_autograd(fw_compiler=forward, bw_compiler=lambda gm, _: gm), ops


@pytest.mark.parametrize("case", BINARY_CASES)
def test_compiled_binary_runs_the_triton_kernel(case):
    """Under torch.compile the binary losses run the Triton kernel as one custom op (no graph
    break); values and gradients equal the eager fused path's, also for a second backward."""
    logits, shapes, reduction = BINARY_CASES[case]
    x, y, kw = _binary_inputs(logits, shapes)
    fn = _binary_fn(logits)
    backend, ops = _recording_aot()
    f = torch.compile(lambda x, y: fn(x, y, reduction=reduction, **kw), fullgraph=True, backend=backend)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    name = "crossent.binary_cross_entropy" + ("_with_logits" if logits else "") + "_triton.default"
    with crossent.use_backend("triton"):
        got = f(xc, y)
        assert name in ops  # (one node: the kernel, not the composite formulas)
        want = fn(xe, y, reduction=reduction, **kw)
    assert_close(got, want)
    assert got.dtype == want.dtype and got.shape == want.shape
    go = torch.rand(got.shape, dtype=got.dtype) + 0.5
    first = torch.autograd.grad(got, xc, go, retain_graph=True)[0]
    assert_close(first, torch.autograd.grad(want, xe, go)[0])
    assert torch.equal(torch.autograd.grad(got, xc, go)[0], first)  # (retain_graph: the same again)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compiled_binary_16bit_and_mixed_target_dtype(dtype):
    """The loss dtype is torch's (with logits: the target's, float16 here); the gradient in the
    input's dtype, as the eager fused path's (torch's own goes through float16). (Not bitwise:
    the interpreter's float32 -> bfloat16 store rounds otherwise than torch's .to().)"""
    x, y, _ = _binary_inputs(True, {}, dtype=dtype, seed=3)
    y = y.to(torch.float16)
    f = torch.compile(lambda x, y: crossent.binary_cross_entropy_with_logits(x, y), fullgraph=True,
                      backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        got = f(xc, y)
        eager = crossent.binary_cross_entropy_with_logits(xe, y)
    want = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert got.dtype == want.dtype == torch.float16
    assert_close(got, want)
    assert torch.equal(got, eager)
    (g,), (g_e,) = torch.autograd.grad(got, xc), torch.autograd.grad(eager, xe)
    assert g.dtype == dtype
    assert_close(g, g_e)


@pytest.mark.parametrize("logits", [True, False], ids=["with_logits", "probabilities"])
def test_binary_custom_ops_pass_opcheck(logits):
    """torch.library.opcheck: the fake (meta) function, the schema, the autograd registration and
    the AOT dispatcher agree with the real kernel."""
    from crossent._options import LossOptions
    from crossent.backends.triton import _compiled_binary  # (registers the ops)

    assert _compiled_binary is not None
    x, y, kw = _binary_inputs(logits, {"weight": (5,)})
    x.requires_grad_()
    for reduction in ("mean", "none"):
        options = LossOptions(reduction=reduction).encode()
        if logits:
            args = (x, y, kw["weight"], torch.rand(5, dtype=torch.float64), options)
            op = torch.ops.crossent.binary_cross_entropy_with_logits_triton
        else:
            args = (x, y, kw["weight"], options)
            op = torch.ops.crossent.binary_cross_entropy_triton
        torch.library.opcheck(op, args)
