"""The reference losses against torch.nn.functional in float64: values and gradients over grids,
torch's edge cases (ignored and empty batches, the BCE log floor, extreme logits), the extensions
(z_loss, softcap) against independent formulas, and the worked examples of the seed texts."""

from __future__ import annotations

import ast
import inspect
import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from crossent import reference as ref

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64 against float64: only summation order differs
REDUCTIONS = ["none", "mean", "sum"]
SHAPES = {
    "2d": (3, 5),
    "odd": (7, 423),
    "kdim": (2, 4, 3, 5),  # (N, C, d1, d2)
    "unbatched": (5,),
    "empty": (0, 5),
}


def _gen(*key: object) -> torch.Generator:
    """A generator seeded from the test case, so every case draws its own fixed numbers."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _class_targets(shape: tuple[int, ...], ignore_index: int, g: torch.Generator) -> Tensor:
    """Class indices for logits of `shape`; every third position (from the second) is ignored."""
    class_dim = 0 if len(shape) == 1 else 1
    t_shape = shape[:class_dim] + shape[class_dim + 1 :]
    t = torch.randint(0, shape[class_dim], t_shape, generator=g)
    t.view(-1)[1::3] = ignore_index
    return t


def _assert_same(ours, theirs, inputs: dict, wrt: tuple[str, ...], **kwargs) -> None:
    """ours(**inputs, **kwargs) equals theirs(...) in value, and in the gradient w.r.t. each input
    named in `wrt` for a random grad_output (not 1)."""

    def run(fn):
        leaves = {k: v.clone().requires_grad_(k in wrt) for k, v in inputs.items() if v is not None}
        return fn(**leaves, **kwargs), leaves

    (out, leaves), (expected, leaves_t) = run(ours), run(theirs)
    assert out.dtype == F64
    torch.testing.assert_close(out, expected, equal_nan=True, **TOL)
    if not wrt:
        return
    grad_out = torch.randn(expected.shape, dtype=F64, generator=_gen(expected.shape))
    grads = torch.autograd.grad(out, [leaves[k] for k in wrt], grad_out)
    grads_t = torch.autograd.grad(expected, [leaves_t[k] for k in wrt], grad_out)
    for name, g, g_t in zip(wrt, grads, grads_t):
        torch.testing.assert_close(g, g_t, **TOL, msg=lambda m, n=name: f"d/d{n}: {m}")


# --- cross_entropy and nll_loss with class indices --------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 1], ids=["ignore-100", "ignore-class1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_class_indices(shape, label_smoothing, ignore_index, weighted, reduction):
    g = _gen(shape, label_smoothing, ignore_index, weighted, reduction)
    n_classes = shape[0 if len(shape) == 1 else 1]
    inputs = {
        "input": 3 * torch.randn(shape, dtype=F64, generator=g),
        "target": _class_targets(shape, ignore_index, g),
        "weight": torch.rand(n_classes, dtype=F64, generator=g) + 0.5 if weighted else None,
    }
    # torch differentiates class-index cross-entropy w.r.t. the input only (weight: error)
    _assert_same(
        ref.cross_entropy,
        F.cross_entropy,
        inputs,
        ("input",),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("ignore_index", [-100, 1], ids=["ignore-100", "ignore-class1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(shape, ignore_index, weighted, reduction):
    g = _gen("nll", shape, ignore_index, weighted, reduction)
    n_classes = shape[0 if len(shape) == 1 else 1]
    inputs = {
        "input": torch.randn(shape, dtype=F64, generator=g),  # need not be normalised
        "target": _class_targets(shape, ignore_index, g),
        "weight": torch.rand(n_classes, dtype=F64, generator=g) + 0.5 if weighted else None,
    }
    _assert_same(
        ref.nll_loss, F.nll_loss, inputs, ("input",), ignore_index=ignore_index, reduction=reduction
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3)], ids=["2d", "kdim"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored(shape, label_smoothing, weighted, reduction):
    """'mean' is 0/0 = nan, as in torch, yet every gradient is an exact 0."""
    inputs = {
        "input": torch.randn(shape, dtype=F64, generator=_gen(shape)),
        "target": torch.full(shape[:1] + shape[2:], -100),
        "weight": torch.rand(shape[1], dtype=F64) + 0.5 if weighted else None,
    }
    kwargs = {"reduction": reduction, "label_smoothing": label_smoothing}
    _assert_same(ref.cross_entropy, F.cross_entropy, inputs, ("input",), **kwargs)
    x = inputs["input"].clone().requires_grad_()
    loss = ref.cross_entropy(x, inputs["target"], inputs["weight"], **kwargs)
    assert loss.isnan().all() if reduction == "mean" else (loss == 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert (grad == 0).all()


def test_uint8_targets_as_torch():
    """Torch accepts int64 and uint8 class indices (other integer dtypes raise); both mean the same."""
    x = torch.randn(6, 4, dtype=F64)
    t = torch.tensor([0, 3, 2, 255, 1, 3])
    for fn in (ref.cross_entropy, ref.nll_loss):
        torch.testing.assert_close(
            fn(x, t.to(torch.uint8), ignore_index=255), fn(x, t, ignore_index=255)
        )
    torch.testing.assert_close(
        ref.cross_entropy(x, t.to(torch.uint8), ignore_index=255),
        F.cross_entropy(x, t.to(torch.uint8), ignore_index=255),
    )


def test_float32_input_gives_float64():
    x, t, w = torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), torch.rand(3)
    out = ref.cross_entropy(x, t, w)
    assert out.dtype == F64
    torch.testing.assert_close(out, F.cross_entropy(x.double(), t, w.double()))


# --- cross_entropy with class probabilities ---------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(shape, label_smoothing, weighted, reduction):
    g = _gen("soft", shape, label_smoothing, weighted, reduction)
    n_classes = shape[0 if len(shape) == 1 else 1]
    inputs = {
        "input": 3 * torch.randn(shape, dtype=F64, generator=g),
        "target": torch.rand(shape, dtype=F64, generator=g),  # need not sum to 1
        "weight": torch.rand(n_classes, dtype=F64, generator=g) + 0.5 if weighted else None,
    }
    # with probability targets torch differentiates w.r.t. input, target and weight
    wrt = ("input", "target", "weight") if weighted else ("input", "target")
    _assert_same(
        ref.cross_entropy,
        F.cross_entropy,
        inputs,
        wrt,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def test_probability_mean_divides_by_samples_not_weights():
    x, t = torch.randn(4, 3, dtype=F64), torch.softmax(torch.randn(4, 3, dtype=F64), 1)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    total = ref.cross_entropy(x, t, w, reduction="sum")
    torch.testing.assert_close(ref.cross_entropy(x, t, w), total / 4)


# --- binary cross-entropy ---------------------------------------------------------------------

# (input shape, weight shape, pos_weight shape): both broadcast to the input; pos_weight is used
# by the with-logits loss only
BCE_CASES = [
    ((4, 3), None, None),
    ((4, 3), (3,), None),
    ((4, 3), (4, 3), (3,)),
    ((4, 3), (4, 1), (3,)),
    ((2, 4, 3), (3,), (3,)),
    ((7,), (7,), (1,)),
    ((0, 3), (3,), (3,)),
]


@pytest.mark.parametrize("shape, w_shape, pw_shape", BCE_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(shape, w_shape, pw_shape, reduction):
    g = _gen("bce", shape, w_shape, reduction)
    inputs = {
        "input": 0.01 + 0.98 * torch.rand(shape, dtype=F64, generator=g),
        "target": torch.rand(shape, dtype=F64, generator=g),
        "weight": None if w_shape is None else torch.rand(w_shape, dtype=F64, generator=g),
    }
    # torch differentiates w.r.t. input and target (weight: error)
    _assert_same(
        ref.binary_cross_entropy,
        F.binary_cross_entropy,
        inputs,
        ("input", "target"),
        reduction=reduction,
    )


@pytest.mark.parametrize("shape, w_shape, pw_shape", BCE_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits(shape, w_shape, pw_shape, reduction):
    g = _gen("bcel", shape, w_shape, pw_shape, reduction)
    w = None if w_shape is None else torch.rand(w_shape, dtype=F64, generator=g)
    pw = None if pw_shape is None else 3 * torch.rand(pw_shape, dtype=F64, generator=g)
    inputs = {
        "input": 4 * torch.randn(shape, dtype=F64, generator=g),
        "target": torch.rand(shape, dtype=F64, generator=g),
        "weight": w,
        "pos_weight": pw,
    }
    # torch differentiates w.r.t. input and target (weight, pos_weight: error)
    _assert_same(
        ref.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        inputs,
        ("input", "target"),
        reduction=reduction,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_log_floor(reduction):
    """At p = 0 and 1 torch floors each log at -100: a confident miss costs exactly 100."""
    p = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], dtype=F64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3], dtype=F64)
    _assert_same(
        ref.binary_cross_entropy,
        F.binary_cross_entropy,
        {"input": p, "target": y},
        (),
        reduction=reduction,
    )
    if reduction == "none":
        torch.testing.assert_close(
            ref.binary_cross_entropy(p, y, reduction="none")[:4],
            torch.tensor([0.0, 0.0, 100.0, 100.0], dtype=F64),
        )


def test_binary_cross_entropy_gradient_at_the_floor():
    """The reference's gradients are torch's backward formulas (Loss.cpp), not the derivative of
    the floored formula: d/dp = (p - y) / max(p (1 - p), 1e-12) gives 0, 0, -1e12, 1e12 here, and
    d/dy = log(1 - p) - log p, unfloored, gives +-inf; the loss is the floored formula's."""
    p = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=F64, requires_grad=True)
    loss = ref.binary_cross_entropy(p, y, reduction="sum")
    assert loss.item() == 200.0
    grad_p, grad_y = torch.autograd.grad(loss, [p, y])
    eps = 9.999999960041972e-13
    torch.testing.assert_close(grad_p, torch.tensor([0.0, 0.0, -1 / eps, 1 / eps], dtype=F64))
    inf = float("inf")
    torch.testing.assert_close(grad_y, torch.tensor([inf, -inf, inf, -inf], dtype=F64))
    pt, yt = p.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    for a, b in zip((grad_p, grad_y), torch.autograd.grad(F.binary_cross_entropy(pt, yt, reduction="sum"), [pt, yt])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_extreme(reduction):
    x = torch.tensor([100.0, -100.0, 100.0, -100.0, 1000.0, -1000.0, 0.0], dtype=F64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.5], dtype=F64)
    pw = torch.tensor(2.5, dtype=F64)
    inputs = {"input": x, "target": y, "pos_weight": pw}
    _assert_same(
        ref.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        inputs,
        ("input", "target"),
        reduction=reduction,
    )


# --- extensions: z_loss and softcap -----------------------------------------------------------


def _ce_inputs(kind: str, weighted: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    g = _gen("ext", kind, weighted)
    x = 3 * torch.randn(6, 5, dtype=F64, generator=g)
    if kind == "indices":
        t = torch.tensor([0, 4, -100, 2, 2, -100])
    else:
        t = torch.rand(6, 5, dtype=F64, generator=g)
    return x, t, torch.rand(5, dtype=F64, generator=g) + 0.5 if weighted else None


@pytest.mark.parametrize("kind", ["indices", "probabilities"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extensions_off_is_plain_cross_entropy(kind, reduction):
    x, t, w = _ce_inputs(kind, weighted=True)
    torch.testing.assert_close(
        ref.cross_entropy(x, t, w, reduction=reduction, z_loss=0.0, softcap=None),
        F.cross_entropy(x, t, w, reduction=reduction),
    )
    # a cap far above the logits changes them by x^3 / (3 s^2): nothing at float64 precision
    torch.testing.assert_close(
        ref.cross_entropy(x, t, w, reduction=reduction, softcap=1e6),
        F.cross_entropy(x, t, w, reduction=reduction),
    )


@pytest.mark.parametrize("kind", ["indices", "probabilities"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softcap_is_cross_entropy_of_capped_logits(kind, weighted, label_smoothing, reduction):
    x, t, w = _ce_inputs(kind, weighted)
    s = 2.5
    kwargs = {"reduction": reduction, "label_smoothing": label_smoothing}
    _assert_same(
        lambda input, **kw: ref.cross_entropy(input, softcap=s, **kw),
        lambda input, **kw: F.cross_entropy(s * torch.tanh(input / s), **kw),
        {"input": x, "target": t, "weight": w},
        ("input",),
        **kwargs,
    )


@pytest.mark.parametrize("kind", ["indices", "probabilities"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_adds_squared_lse_per_counted_sample(kind, weighted, label_smoothing, reduction):
    """z * lse^2, unweighted, on each counted sample; 'mean' keeps torch's denominator."""
    x, t, w = _ce_inputs(kind, weighted)
    z = 0.03

    def expected(input, target, weight=None):
        if kind == "indices":
            counted = target != -100
            denominator = weight[target[counted]].sum() if weighted else counted.sum()
        else:
            counted = torch.ones(input.shape[0], dtype=torch.bool)
            denominator = input.shape[0]
        z_term = torch.where(counted, z * torch.logsumexp(input, 1) ** 2, 0.0)
        ce = F.cross_entropy(
            input, target, weight, reduction=reduction, label_smoothing=label_smoothing
        )
        extra = {"none": z_term, "sum": z_term.sum(), "mean": z_term.sum() / denominator}
        return ce + extra[reduction]

    def ours(input, target, weight=None):
        return ref.cross_entropy(
            input, target, weight, reduction=reduction, label_smoothing=label_smoothing, z_loss=z
        )

    _assert_same(ours, expected, {"input": x, "target": t, "weight": w}, ("input",))


def test_z_loss_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=F64)
    t = torch.tensor([2, -100])
    z = 0.01
    lse = math.log(math.e + math.e**2 + math.e**3)
    sample_0 = lse - 3.0 + z * lse**2
    out = ref.cross_entropy(x, t, z_loss=z, reduction="none")
    torch.testing.assert_close(out, torch.tensor([sample_0, 0.0], dtype=F64))
    torch.testing.assert_close(ref.cross_entropy(x, t, z_loss=z), torch.tensor(sample_0, dtype=F64))


def test_softcap_by_hand():
    x = torch.tensor([[10.0, 0.0, -10.0]], dtype=F64)
    capped = [5 * math.tanh(2.0), 0.0, -5 * math.tanh(2.0)]
    expected = math.log(sum(math.exp(c) for c in capped)) - capped[0]
    out = ref.cross_entropy(x, torch.tensor([0]), softcap=5.0)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64))


# --- the seeds' worked examples ---------------------------------------------------------------


def test_seed_binary_example():
    """y = 1, p = 0.9: -log 0.9 = 0.1054."""
    out = ref.binary_cross_entropy(torch.tensor([0.9]), torch.tensor([1.0]))
    assert round(out.item(), 4) == 0.1054


def test_seed_multiclass_example():
    """Probabilities [0.2, 0.7, 0.1], true class the second (index 1): -log 0.7 = 0.3567."""
    probs = torch.tensor([[0.2, 0.7, 0.1]], dtype=F64)
    target = torch.tensor([1])
    assert round(ref.nll_loss(probs.log(), target).item(), 4) == 0.3567
    # the logits log p give back the same probabilities under softmax
    assert round(ref.cross_entropy(probs.log(), target).item(), 4) == 0.3567


def test_seed_pytorch_snippet():
    """The seed's nn.BCEWithLogitsLoss and nn.CrossEntropyLoss calls, with their default options."""
    logit, y = torch.tensor([2.0]), torch.tensor([1.0])
    torch.testing.assert_close(
        ref.binary_cross_entropy_with_logits(logit, y),
        torch.nn.BCEWithLogitsLoss()(logit.double(), y.double()),
    )
    logits, target = torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([1])
    torch.testing.assert_close(
        ref.cross_entropy(logits, target), torch.nn.CrossEntropyLoss()(logits.double(), target)
    )


# --- the reference stays independent of torch's implementations -------------------------------

BANNED = {
    "cross_entropy",
    "nll_loss",
    "log_softmax",
    "softmax",
    "logsumexp",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid",
    "logsigmoid",
    "softplus",
    "functional",
}


def test_reference_uses_only_elementary_ops():
    tree = ast.parse(inspect.getsource(ref))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert not used & BANNED


@pytest.mark.parametrize("heads", [(), (3,), (2, 2)], ids=["plain", "k1", "k2"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_is_the_linear_layer_then_cross_entropy(heads, soft, reduction):
    """The executable contract: F.linear on the flattened heads, logits (N, C, *heads), then
    torch's cross_entropy; normalizer divides the sum."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((heads, soft, reduction)).encode()))
    n, d, c = 6, 4, 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(c, *heads, d, generator=gen, dtype=torch.float64)
    b = torch.randn(c, *heads, generator=gen, dtype=torch.float64)
    cw = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    if soft:
        t = torch.randn(n, c, *heads, generator=gen, dtype=torch.float64).softmax(1)
    else:
        t = torch.randint(0, c, (n, *heads), generator=gen)
    logits = torch.nn.functional.linear(x, w.reshape(-1, d), b.reshape(-1)).reshape(n, c, *heads)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    got = ref.linear_cross_entropy(x, w, t, b, cw, **kw)
    torch.testing.assert_close(got, F.cross_entropy(logits, t, cw, **kw), rtol=1e-12, atol=1e-12)
    if reduction == "mean":
        total = F.cross_entropy(logits, t, cw, reduction="sum", label_smoothing=0.1)
        torch.testing.assert_close(ref.linear_cross_entropy(x, w, t, b, cw, normalizer=7.0, label_smoothing=0.1),
                                   total / 7.0, rtol=1e-12, atol=1e-12)
    assert ref.linear_cross_entropy(x[0], w.reshape(c, -1, d)[:, 0], t.reshape(n, -1)[0, 0] if not soft else
                                    t.reshape(n, c, -1)[0, :, 0]).shape == ()


@pytest.fixture
def flush_denormal():
    """Flush-to-zero on (torch.set_flush_denormal; torch 2.4's Inductor turns it on for the whole
    process through its -ffast-math kernels), off again afterwards."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("backend", ["composite", "fused", "torch", "reference"])
def test_bce_log_floor_holds_under_flush_to_zero(flush_denormal, backend, dtype):
    """p = 0 and p = 1 hit the -100 floor of both logs: finite losses and gradients equal to
    torch's on every path, also where denormals (e^-100 in float32) read as 0."""
    import crossent

    p = torch.tensor([[0.0, 1.0, 0.5, 1e-30], [1.0, 0.0, 0.25, 0.999]], dtype=dtype)
    y = torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.3, 0.7, 1.0, 1.0]], dtype=dtype)
    for reduction in REDUCTIONS:
        pa, pt = p.clone().requires_grad_(), p.clone().requires_grad_()
        with crossent.use_backend(backend):
            ours = crossent.binary_cross_entropy(pa, y, reduction=reduction)
        theirs = F.binary_cross_entropy(pt, y, reduction=reduction)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
        grad = torch.autograd.grad(ours.sum(), pa)[0]
        assert torch.isfinite(grad).all(), grad
