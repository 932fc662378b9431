"""torch's behaviour whichever kernel runs: a call gives the same result dtype, the same refusals
(with an exception torch's callers catch) and the same differentiable arguments at a small size
(torch's own kernel), at a size where crossent's kernels run, and on every forced backend."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import crossent
from crossent import Backend
from crossent.backends.chunked import TORCH_MAX_NUMEL

HAS_TORCH_LINEAR = hasattr(TF, "linear_cross_entropy")  # torch >= 2.13


def _torch_linear_cross_entropy(h, w, t, **kwargs):
    """torch's F.linear_cross_entropy; on a torch without it (< 2.13; the torch-version matrix
    runs this file), its documented definition cross_entropy(linear(h, w), t): crossent's linear
    loss follows torch 2.13's contract on every torch. The two agree on every call of this file
    (test_the_composition_stands_in_for_torchs_linear_cross_entropy), except a class weight that
    requires grad, which only torch's linear function refuses (its own test below)."""
    if HAS_TORCH_LINEAR:
        return TF.linear_cross_entropy(h, w, t, **kwargs)
    logits = torch.einsum("nd,c...d->nc...", h, w)  # (a K-dim weight (C, *K, D): K-dim logits)
    return TF.cross_entropy(logits, t, **kwargs)


FORCED = [b for b in Backend if b is not Backend.TORCH]
# (N, C): torch's kernel below the dispatch thresholds; crossent's kernels above them (with a
# gradient: TORCH_MAX_NUMEL 1.57M elements, BINARY_TORCH_MAX_NUMEL 4.2M)
SMALL, LARGE, LARGE_BINARY = (6, 5), (TORCH_MAX_NUMEL // 1000 + 16, 1000), (2100, 2048)


def _outcome(call):
    """('ok', result) or ('refused', exception): refusals must be RuntimeErrors (or TypeErrors /
    ValueErrors where torch raises those), as torch's are."""
    try:
        return "ok", call()
    except (RuntimeError, TypeError, ValueError) as err:
        return "refused", err


def _same(torch_call, crossent_call, what):
    a, ra = _outcome(torch_call)
    b, rb = _outcome(crossent_call)
    assert a == b, f"{what}: torch {a} ({ra if a == 'refused' else ''}), crossent {b} ({rb if b == 'refused' else ''})"
    if a == "refused":
        assert isinstance(rb, type(ra)) or (isinstance(ra, RuntimeError) and isinstance(rb, RuntimeError)), (what, ra, rb)
    return ra, rb


def _on(backend):
    return crossent.use_backend(backend) if backend is not None else torch.enable_grad()


# ---------------------------------------------------------------- class-index target dtypes

TARGET_DTYPES = [torch.int64, torch.uint8, torch.int32, torch.int16, torch.int8]


@pytest.mark.parametrize("dtype", TARGET_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["unbatched", "batched", "k_dim"])
@pytest.mark.parametrize("backend", [None, Backend.FUSED, Backend.REFERENCE], ids=["auto", "fused", "reference"])
def test_class_index_dtypes_are_torchs(dtype, layout, backend):
    n, c = SMALL
    shape = {"unbatched": (c,), "batched": (n, c), "k_dim": (n, c, 3)}[layout]
    x = torch.randn(shape, requires_grad=True)
    tshape = () if layout == "unbatched" else (n,) + shape[2:]
    t = torch.randint(0, c, tshape).to(dtype)
    for name in ("cross_entropy", "nll_loss"):
        with _on(backend):
            _same(lambda: getattr(TF, name)(x, t), lambda: getattr(crossent, name)(x, t), f"{name} {layout} {dtype}")
    with _on(backend):
        _same(lambda: torch.nn.CrossEntropyLoss()(x, t), lambda: crossent.nn.CrossEntropyLoss()(x, t), "module")


def _linear_dtype_case(dtype, k_dim, large):
    n, c = (8, 5) if not large else (1100, 1000)
    out = (2,) if k_dim else ()
    h, w = torch.randn(n, 4), torch.randn(c, *out, 4)
    return h, w, torch.randint(0, c, (n, *out)).to(dtype)


@pytest.mark.parametrize("dtype", TARGET_DTYPES, ids=str)
@pytest.mark.parametrize("k_dim", [False, True])
@pytest.mark.parametrize("large", [False, True])
def test_linear_class_index_dtypes_are_torchs(dtype, k_dim, large):
    h, w, t = _linear_dtype_case(dtype, k_dim, large)
    _same(lambda: _torch_linear_cross_entropy(h, w, t), lambda: crossent.linear_cross_entropy(h, w, t),
          f"linear k_dim={k_dim} {dtype}")


@pytest.mark.skipif(not HAS_TORCH_LINEAR, reason="checks the stand-in against torch >= 2.13's own function")
def test_the_composition_stands_in_for_torchs_linear_cross_entropy():
    """Where torch has F.linear_cross_entropy, cross_entropy(linear(h, w), t) gives the same
    outcome (value, or the refusal's type) for every call the tests above make with the stand-in,
    so that on older torch they compare crossent with what torch 2.13 does."""
    def composition(h, w, t, **kw):
        return TF.cross_entropy(torch.einsum("nd,c...d->nc...", h, w), t, **kw)

    calls = [(_linear_dtype_case(*case), {}) for case in itertools.product(TARGET_DTYPES, (False, True), (False, True))]
    for kw in OPTION_VALUES:
        for n, c in ((8, 5), (1100, 1000)):
            calls.append(((torch.randn(n, 4), torch.randn(c, 4), torch.randint(0, c, (n,))), kw))
    for (h, w, t), kw in calls:
        a, ra = _outcome(lambda: TF.linear_cross_entropy(h, w, t, **kw))
        b, rb = _outcome(lambda: composition(h, w, t, **kw))
        assert a == b, (kw, t.dtype, w.shape, ra, rb)
        if a == "refused":
            assert type(ra) is type(rb), (kw, ra, rb)
        else:
            torch.testing.assert_close(ra, rb)


def test_large_class_index_dtypes_are_torchs():
    x = torch.randn(LARGE, requires_grad=True)
    for dtype in TARGET_DTYPES:
        t = torch.randint(0, LARGE[1], LARGE[:1]).to(dtype)
        _same(lambda: TF.cross_entropy(x, t), lambda: crossent.cross_entropy(x, t), f"large {dtype}")
    tk = torch.zeros(4, 3, dtype=torch.uint8)
    xk = torch.randn(4, LARGE[1], 3, requires_grad=True)
    with crossent.use_backend("fused"):
        _, err = _same(lambda: TF.cross_entropy(xk, tk), lambda: crossent.cross_entropy(xk, tk), "k-dim uint8")
    assert "int64" in str(err) and "torch.uint8" in str(err)


# ---------------------------------------------------------------- result dtypes

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("size", ["small", "large"])
def test_binary_and_probability_result_dtypes_are_torchs(size):
    shape = SMALL if size == "small" else LARGE_BINARY
    pairs = list(itertools.product(FLOATS, FLOATS))
    if size == "large":  # (16-bit arithmetic is slow on CPUs: float32 logits, every target)
        pairs = [(xd, yd) for xd, yd in pairs if xd == torch.float32] + [(torch.float64, torch.float32)]
    for xd, yd in pairs:
        x = torch.randn(shape, dtype=xd)
        y = torch.rand(shape, dtype=yd)
        p = torch.rand(shape, dtype=xd)
        cases = {
            "bce_with_logits": (TF.binary_cross_entropy_with_logits, crossent.binary_cross_entropy_with_logits, (x, y)),
            "bce": (TF.binary_cross_entropy, crossent.binary_cross_entropy, (p, y)),
            "bce_with_logits weight": (TF.binary_cross_entropy_with_logits, crossent.binary_cross_entropy_with_logits,
                                       (x, torch.ones_like(x), y[0])),
        }
        if size == "small" or xd == torch.float32:
            cases["probabilities"] = (TF.cross_entropy, crossent.cross_entropy, (x, y))
        for what, (tf, cf, args) in cases.items():
            ra, rb = _same(lambda: tf(*args), lambda: cf(*args), f"{what} {xd} {yd}")
            if isinstance(ra, torch.Tensor):
                assert ra.dtype == rb.dtype, (what, xd, yd, ra.dtype, rb.dtype)


@pytest.mark.parametrize("backend", FORCED, ids=lambda b: b.value)
def test_result_dtypes_on_every_backend(backend):
    x = torch.randn(SMALL, dtype=torch.float32, requires_grad=True)
    for yd in FLOATS:
        y = torch.rand(SMALL, dtype=yd)
        with crossent.use_backend(backend):
            ours = crossent.binary_cross_entropy_with_logits(x, y, reduction="none")
            assert ours.dtype == TF.binary_cross_entropy_with_logits(x, y).dtype == yd
            with pytest.raises(RuntimeError, match="target has dtype"):
                if yd != torch.float32:
                    crossent.binary_cross_entropy(x.sigmoid(), y)
                else:
                    raise RuntimeError("target has dtype (same: nothing to refuse)")


# ---------------------------------------------------------------- differentiable arguments


def _diff_cases(size):
    """(what, function, arguments, the arguments other than input that ask for a gradient); at the
    large size each family at a size where crossent's kernels run."""
    shape, binary = (SMALL, SMALL) if size == "small" else (LARGE, LARGE_BINARY)
    n, c = shape
    x = torch.randn(shape)
    idx = torch.randint(0, c, (n,))
    probs = torch.rand(shape).softmax(1)
    xb, y, bw = torch.randn(binary), torch.rand(binary), torch.rand(binary)
    p = torch.rand(binary) * 0.98 + 0.01  # (at 0 and 1 see test_bce_gradients_at_0_and_1_are_torchs)
    pw = torch.rand(binary[1]) + 0.5
    w = torch.rand(c) + 0.5
    return [
        ("ce index weight", "cross_entropy", dict(input=x, target=idx, weight=w), ["weight"]),
        ("ce index weight smoothing", "cross_entropy", dict(input=x, target=idx, weight=w, label_smoothing=0.1), ["weight"]),
        ("ce probs weight+target", "cross_entropy", dict(input=x, target=probs, weight=w), ["weight", "target"]),
        ("nll weight", "nll_loss", dict(input=x, target=idx, weight=w), ["weight"]),
        ("bce target", "binary_cross_entropy", dict(input=p, target=y), ["target"]),
        ("bce weight", "binary_cross_entropy", dict(input=p, target=y, weight=bw), ["weight"]),
        ("bcel target", "binary_cross_entropy_with_logits", dict(input=xb, target=y), ["target"]),
        ("bcel weight", "binary_cross_entropy_with_logits", dict(input=xb, target=y, weight=bw), ["weight"]),
        ("bcel pos_weight", "binary_cross_entropy_with_logits", dict(input=xb, target=y, pos_weight=pw), ["pos_weight"]),
    ]


def _check_differentiable(fn, kwargs, extra, what, input_grad=True):
    def run(f):
        args = {k: (v.clone().requires_grad_(k == "input" and input_grad or k in extra)
                    if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        loss = f(**args)
        wanted = [args[k] for k in ("input", *extra) if args[k].requires_grad]
        return loss, torch.autograd.grad(loss, wanted)

    ra, rb = _same(lambda: run(getattr(TF, fn)), lambda: run(getattr(crossent, fn)), what)
    if not isinstance(ra, BaseException):
        torch.testing.assert_close(rb[0], ra[0], atol=1e-5, rtol=1e-5)
        for ga, gb in zip(ra[1], rb[1]):
            torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-5)
    else:
        assert "requires grad" in str(rb) and "detach()" in str(rb), str(rb)


@pytest.mark.parametrize("size", ["small", "large"])
def test_differentiable_arguments_are_torchs(size):
    for what, fn, kwargs, extra in _diff_cases(size):
        _check_differentiable(fn, kwargs, extra, f"{size} {what}")
        _check_differentiable(fn, kwargs, extra, f"{size} {what}, input without grad", input_grad=False)
    # outside grad mode nothing is refused
    x, t, w = torch.randn(SMALL), torch.tensor([0, 1, 2, 3, 4, 0]), torch.rand(5, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(crossent.cross_entropy(x, t, w), TF.cross_entropy(x, t, w))


@pytest.mark.parametrize("backend", FORCED, ids=lambda b: b.value)
def test_differentiable_arguments_on_every_backend(backend):
    with crossent.use_backend(backend):
        for what, fn, kwargs, extra in _diff_cases("small"):
            _check_differentiable(fn, kwargs, extra, f"{backend.value} {what}")


def test_linear_class_weight_is_refused_as_torch_refuses_it():
    """torch 2.13's F.linear_cross_entropy refuses a class weight that requires grad; crossent
    refuses it on every torch (also where torch has no linear function: its contract is 2.13's)."""
    for n, c in ((8, 5), (1100, 1000)):
        h, w, t = torch.randn(n, 4), torch.randn(c, 4), torch.randint(0, c, (n,))
        cw = torch.rand(c, requires_grad=True)
        if HAS_TORCH_LINEAR:
            _, err = _same(lambda: TF.linear_cross_entropy(h, w, t, weight=cw),
                           lambda: crossent.linear_cross_entropy(h, w, t, weight=cw), f"linear {n}")
        else:
            with pytest.raises(RuntimeError) as info:
                crossent.linear_cross_entropy(h, w, t, weight=cw)
            err = info.value
        assert "torch does not differentiate" in str(err)


# ---------------------------------------------------------------- option values torch takes


OPTION_VALUES = [
    dict(ignore_index=np.int64(1)), dict(ignore_index=np.int32(2)), dict(ignore_index=torch.tensor(1)),
    dict(ignore_index=np.array(1)), dict(ignore_index=1.0), dict(ignore_index=True),
    dict(label_smoothing=np.float32(0.1)), dict(label_smoothing=torch.tensor(0.2)), dict(label_smoothing=1),
    dict(label_smoothing=True), dict(label_smoothing=torch.tensor(0.1, requires_grad=True)),
    dict(label_smoothing=np.array(0.1)), dict(label_smoothing="0.1"), dict(label_smoothing=1.5),
    dict(reduction=np.str_("sum")), dict(reduction=None),
]


@pytest.mark.parametrize("kw", OPTION_VALUES, ids=repr)
def test_option_values_are_taken_as_torch_takes_them(kw):
    for shape in (SMALL, LARGE):
        x = torch.randn(shape, requires_grad=True)
        t = torch.randint(0, shape[1], shape[:1])
        _same(lambda: TF.cross_entropy(x, t, **kw), lambda: crossent.cross_entropy(x, t, **kw), f"{shape}")
    x = torch.randn(SMALL, requires_grad=True)
    t = torch.randint(0, SMALL[1], SMALL[:1])
    _same(lambda: torch.nn.CrossEntropyLoss(**kw)(x, t), lambda: crossent.nn.CrossEntropyLoss(**kw)(x, t), "module")
    if "reduction" not in kw or kw["reduction"] is not None:
        for n, c in ((8, 5), (1100, 1000)):
            h, w, t = torch.randn(n, 4), torch.randn(c, 4), torch.randint(0, c, (n,))
            _same(lambda: _torch_linear_cross_entropy(h, w, t, **kw),
                  lambda: crossent.linear_cross_entropy(h, w, t, **kw), f"linear {n}")


def test_negative_and_nan_smoothing_are_refused_as_documented():
    """Outside torch's documented [0, 1] torch computes silently with a distribution of negative
    mass; crossent refuses (README)."""
    x, t = torch.randn(SMALL), torch.tensor([0, 1, 2, 3, 4, 0])
    for value in (-0.1, float("nan")):
        with pytest.raises(RuntimeError, match=r"label_smoothing must be in \[0, 1\]"):
            crossent.cross_entropy(x, t, label_smoothing=value)


@pytest.mark.parametrize("backend", [None, *FORCED], ids=lambda b: b.value if b else "auto")
def test_bce_gradients_at_0_and_1_are_torchs(backend):
    """Saturated probabilities (sigmoid is exactly 1.0 in float32 from x = 17): torch's backward
    formulas -- the input's with its denominator clamped at 1e-12, the target's log(1-p) - log p
    -- on every path, not the derivative of the floored loss."""
    p = torch.tensor([0.0, 1e-30, 1e-6, 0.5, 1 - 1e-7, 1.0]).repeat(2)
    y = torch.tensor([0.3] * 6 + [1.0] * 6)
    for grad_y in (False, True):
        pa, ya = p.clone().requires_grad_(), y.clone().requires_grad_(grad_y)
        pt, yt = p.clone().requires_grad_(), y.clone().requires_grad_(grad_y)
        with _on(backend):
            ours = crossent.binary_cross_entropy(pa, ya, reduction="sum")
        theirs = TF.binary_cross_entropy(pt, yt, reduction="sum")
        torch.testing.assert_close(ours, theirs)
        wanted = (pa, ya) if grad_y else (pa,)
        for go, gt in zip(torch.autograd.grad(ours, wanted), torch.autograd.grad(theirs, (pt, yt) if grad_y else (pt,))):
            torch.testing.assert_close(go, gt, equal_nan=True)
