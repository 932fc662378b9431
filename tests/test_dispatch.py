"""Which path each documented kind of input takes (the rule in _dispatch.py), pinned."""

from __future__ import annotations

import pytest
import torch

import crossent
from crossent import _dispatch, _to_torch, functional


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch):
    """Pin the rule's logic with small thresholds (the real ones are measured crossovers)."""
    monkeypatch.setattr(_to_torch, "TORCH_MAX_NUMEL", 4096)
    monkeypatch.setattr(_to_torch, "TORCH_MAX_NUMEL_NO_GRAD", 16384)
    monkeypatch.setattr(_to_torch, "BINARY_TORCH_MAX_NUMEL", 4096)
    monkeypatch.setattr(_to_torch, "KDIM_TORCH_MAX_NUMEL", 8192)


@pytest.fixture
def paths(monkeypatch):
    """Record which backend ran each call: every function of every backend module is wrapped."""
    seen = []
    for b in crossent.Backend:
        module = _dispatch.backend(b)
        for name in dir(module):
            if name in FAMILIES or (name.endswith("_unchecked") and name[: -len("_unchecked")] in FAMILIES):
                real = getattr(module, name)
                monkeypatch.setattr(module, name, lambda *a, _r=real, _b=b.value, **k: (seen.append(_b), _r(*a, **k))[1])
    # the commonest small cross_entropy calls torch's kernel from the rule itself
    real_kernel = _to_torch._ce_kernel
    for module in (_to_torch, functional):
        monkeypatch.setattr(module, "_ce_kernel", lambda *a: (seen.append("torch"), real_kernel(*a))[1])
    return seen


FAMILIES = {"cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
            "linear_cross_entropy"}


def _x(n, c, grad=True):
    return torch.randn(n, c, requires_grad=grad)


SMALL = 4096  # classes: 16 rows stay under the no-grad threshold, 64 rows exceed every threshold


@pytest.mark.parametrize(
    "call, expected",
    [
        # small CPU inputs, options torch has: torch's kernel
        (lambda: crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,))), "torch"),
        (lambda: crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,)), label_smoothing=0.1), "torch"),
        (lambda: crossent.nll_loss(_x(16, 10), torch.randint(0, 10, (16,))), "torch"),
        (lambda: crossent.binary_cross_entropy_with_logits(_x(64, 1), torch.rand(64, 1)), "torch"),
        # crossent-only options: fused at any size
        (lambda: crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,)), z_loss=1e-4), "fused"),
        (lambda: crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,)), softcap=30.0), "fused"),
        (lambda: crossent.cross_entropy(_x(16, 10) * 1, torch.randint(0, 10, (16,)), inplace_backward=True), "fused"),
        # large inputs: fused
        (lambda: crossent.cross_entropy(_x(64, SMALL), torch.randint(0, SMALL, (64,))), "fused"),
        # ... except nll_loss on the CPU: a gather and a scatter, torch's kernel at every size
        (lambda: crossent.nll_loss(_x(64, SMALL), torch.randint(0, SMALL, (64,))), "torch"),
        (lambda: crossent.binary_cross_entropy_with_logits(_x(64, 128), torch.rand(64, 128)), "fused"),
        # large, with a gradient the fused kernel does not give (probability target): composite
        (lambda: crossent.cross_entropy(_x(64, SMALL), torch.rand(64, SMALL).softmax(1).requires_grad_()), "composite"),
        (lambda: crossent.binary_cross_entropy_with_logits(_x(64, 128), torch.rand(64, 128).requires_grad_()), "composite"),
        # invalid scalar options never reach torch (torch would accept some of them silently)
        (lambda: crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,)), label_smoothing=-0.1), None),
    ],
)
def test_documented_paths(paths, call, expected):
    if expected is None:
        with pytest.raises(ValueError, match="label_smoothing"):
            call()
        assert "torch" not in paths
        return
    call()
    assert paths[-1] == expected, paths


def test_no_grad_has_its_own_threshold(paths):
    x = _x(2, SMALL)  # above the training threshold, below the no-grad one
    crossent.cross_entropy(x, torch.randint(0, SMALL, (2,)))
    with torch.no_grad():
        crossent.cross_entropy(x, torch.randint(0, SMALL, (2,)))
        loss = crossent.cross_entropy(_x(64, SMALL), torch.randint(0, SMALL, (64,)))
    assert paths == ["fused", "torch", "fused"] and loss.grad_fn is None


def test_probability_targets_and_binary_losses_on_torch_reduce_in_a_fixed_order(paths, monkeypatch):
    """Above torch's grain size (SERIAL_REDUCTION elements) torch's probability-target and binary
    losses end in a full sum whose order follows the thread count; on the torch route crossent
    takes their per-sample losses and reduces them in a fixed order: the same bits at any thread
    count."""
    from crossent.backends import common

    monkeypatch.setattr(_to_torch, "TORCH_MAX_NUMEL", 1 << 20)
    monkeypatch.setattr(_to_torch, "BINARY_TORCH_MAX_NUMEL", 1 << 20)
    n, c = 400, 100  # 40000 elements: above SERIAL_REDUCTION (32768), on the torch route
    assert n * c > common.SERIAL_REDUCTION
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen, requires_grad=True)
    t = torch.rand(n, c, generator=gen).softmax(1)
    y = torch.rand(n, c, generator=gen)
    F = torch.nn.functional
    expected = (common.fixed_order_reduce(F.cross_entropy(x, t, reduction="none"), "mean"),
                common.fixed_order_reduce(F.binary_cross_entropy_with_logits(x, y, reduction="none"), "sum"))
    threads = torch.get_num_threads()
    try:
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            got = (crossent.cross_entropy(x, t), crossent.binary_cross_entropy_with_logits(x, y, reduction="sum"))
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), k
    finally:
        torch.set_num_threads(threads)
    assert set(paths) == {"torch"}
    torch.testing.assert_close(got[0], F.cross_entropy(x, t))


def test_forced_backend_wins(paths):
    with crossent.use_backend("fused"):
        crossent.cross_entropy(_x(16, 10), torch.randint(0, 10, (16,)))
    with crossent.use_backend("torch"):
        crossent.cross_entropy(_x(64, SMALL), torch.randint(0, SMALL, (64,)))
    assert paths == ["fused", "torch"]


def test_errors_found_by_torch_are_reported_by_crossent():
    with pytest.raises(ValueError, match=r"cross_entropy: target contains 10 at index \(0,\)"):
        crossent.cross_entropy(_x(4, 10), torch.tensor([10, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must hold probabilities"):
        crossent.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0]))


def test_readme_lists_exactly_the_backends_that_exist():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("### Which implementation runs", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert listed == {b.value for b in crossent.Backend}


def test_every_backend_offers_the_whole_contract():
    for b in crossent.Backend:
        module = _dispatch.backend(b)
        for name in FAMILIES:
            assert callable(getattr(module, name)), (b, name)


def test_torch_refusing_the_arguments_runs_the_checks(paths):
    """int32 class indices: torch refuses them, and so do crossent's checks, with crossent's
    message and an exception torch's callers catch (RuntimeError)."""
    x = _x(16, 10)
    t = torch.randint(0, 10, (16,))
    with pytest.raises(RuntimeError, match=r"target of class indices must be int64 or uint8.*torch.int32"):
        crossent.cross_entropy(x, t.int())
    assert paths == ["torch"]  # tried once, refused: no second dispatch


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CPU out of memory"), KeyboardInterrupt(), AttributeError("bug")])
def test_errors_that_are_not_about_the_arguments_propagate(monkeypatch, error):
    from crossent.backends import torch_kernels

    def fail(*a, **k):
        raise error

    for name in ("cross_entropy_unchecked", "nll_loss_unchecked", "binary_cross_entropy_with_logits_unchecked",
                 "linear_cross_entropy_unchecked"):
        monkeypatch.setattr(torch_kernels, name, fail)
    monkeypatch.setattr(_to_torch, "_ce_kernel", fail)
    monkeypatch.setattr(functional, "_ce_kernel", fail)
    x = _x(4, 5)
    t = torch.randint(0, 5, (4,))
    for call in (lambda: crossent.cross_entropy(x, t), lambda: crossent.nll_loss(x, t),
                 lambda: crossent.binary_cross_entropy_with_logits(x, torch.rand(4, 5)),
                 lambda: crossent.linear_cross_entropy(x, torch.randn(3, 5), t % 3)):
        with pytest.raises(type(error)):
            call()


# ---------------------------------------------------------------- linear_cross_entropy


def test_linear_small_problems_take_the_composition_and_large_ones_the_fused(paths, monkeypatch):
    x = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(64, 8)
    t = torch.randint(0, 64, (16,))
    crossent.linear_cross_entropy(x, w, t)
    crossent.linear_cross_entropy(x, w.unsqueeze(1), t.unsqueeze(1))  # K-dim: after the checks
    assert set(paths) == {"torch"}
    crossent.linear_cross_entropy(x, w, t, z_loss=1e-3)  # an option torch lacks: fused at any size
    assert paths[-1] == "fused"
    monkeypatch.setattr(_to_torch, "LINEAR_TORCH_MAX_LOGITS", 1000)  # 1024 logits: above it
    crossent.linear_cross_entropy(x, w, t)
    assert paths[-1] == "fused"


def test_linear_never_falls_back_to_the_logits_silently(monkeypatch):
    monkeypatch.setattr(_to_torch, "LINEAR_TORCH_MAX_LOGITS", 0)
    x, w = torch.randn(4, 3), torch.randn(6, 3)
    p = torch.rand(4, 6).softmax(-1).requires_grad_()
    with pytest.raises(ValueError, match=r"target requires grad, .* crossent.use_backend\('reference'\)"):
        crossent.linear_cross_entropy(x, w, p)
    with crossent.use_backend("reference"):
        crossent.linear_cross_entropy(x, w, p).backward()
    assert p.grad is not None


def test_inputs_off_the_cpu_take_torchs_kernel_where_triton_cannot_run(paths):
    """Logits elsewhere (meta here, as a stand-in for a device Triton has no backend for) go to
    torch's kernel at every size, never to the CPU-tuned chunk loop."""
    x = torch.empty(64, SMALL, device="meta", requires_grad=True)
    t = torch.empty(64, dtype=torch.long, device="meta")
    loss = crossent.cross_entropy(x, t)
    assert loss.device.type == "meta" and set(paths) == {"torch"}


def test_on_an_accelerator_triton_runs_from_its_threshold_and_torch_below(monkeypatch):
    """(A meta tensor stands in for a GPU where Triton runs: its descriptor is told so.)"""
    from dataclasses import replace

    from crossent.backends import triton

    monkeypatch.setattr(triton, "DESCRIPTOR", replace(triton.DESCRIPTOR, picked_on=lambda device: True))
    monkeypatch.setattr(triton, "TRITON_MIN_NUMEL", 1 << 18)
    for b in crossent.Backend:  # record the backend a call reaches instead of running it
        for name in ("cross_entropy", "linear_cross_entropy"):
            monkeypatch.setattr(_dispatch.backend(b), name, lambda *a, _b=b: _b)
    monkeypatch.setattr(triton, "DESCRIPTOR", replace(triton.DESCRIPTOR, picked_on=lambda device: True))
    small = torch.empty(8, 10_000, device="meta", requires_grad=True)  # 80K: under the threshold
    large = torch.empty(8, 10_000 * 8, device="meta", requires_grad=True)  # 640K
    assert _to_torch.by_size(small, 4096, 16384)
    assert not _to_torch.by_size(large, 4096, 16384)
    opts = crossent._options.LossOptions()
    t = torch.empty(8, dtype=torch.long, device="meta")
    assert _dispatch.cross_entropy(large, t, None, opts, small=False) is crossent.Backend.TRITON
    # options torch lacks go to Triton at any size; a forced 'fused' stays on the torch-op kernels
    zl = crossent._options.LossOptions(z_loss=1e-4)
    assert _dispatch.cross_entropy(small, t, None, zl, small=True) is crossent.Backend.TRITON
    with crossent.use_backend("fused"):
        assert _dispatch.cross_entropy(large, t, None, opts, small=False) is crossent.Backend.FUSED
    # the linear loss: Triton's kernels under the chunk loop (tiny problems on one real device take
    # the composition; a meta tensor never does: torch would compute a meta loss silently)
    w = torch.empty(300, 16, device="meta", requires_grad=True)
    h = torch.empty(4096, 16, device="meta", requires_grad=True)
    tt = torch.empty(4096, dtype=torch.long, device="meta")
    assert _dispatch.linear_cross_entropy(h, w, tt, None, None, opts) is crossent.Backend.TRITON
    assert not _to_torch.linear_to_torch(h[:8], w, tt[:8], None, None, None, 0.0, False)


def test_triton_is_never_chosen_on_the_cpu_unless_forced(paths):
    x = _x(64, SMALL * 4)
    crossent.cross_entropy(x, torch.randint(0, SMALL * 4, (64,)), z_loss=1e-3)
    assert paths == ["fused"]


def test_forced_triton_where_it_cannot_run_names_the_remedy(monkeypatch):
    from crossent.backends.triton import ops

    x, t = _x(4, 10), torch.randint(0, 10, (4,))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with crossent.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        crossent.cross_entropy(x, t, z_loss=1e-3)
    monkeypatch.setattr(ops, "importable", lambda: False)
    with crossent.use_backend("triton"), pytest.raises(RuntimeError, match=r"pip install 'crossent\[triton\]'"):
        crossent.cross_entropy(x, t, z_loss=1e-3)


def test_importing_crossent_does_not_import_triton():
    """Triton is optional and loaded at the Triton backend's first launch only."""
    import subprocess
    import sys

    code = ("import sys, torch, crossent; crossent.cross_entropy(torch.randn(64, 5000, requires_grad=True), "
            "torch.randint(0, 5000, (64,)), z_loss=1e-3); assert 'triton' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the commonest small call


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plain_small_call_is_torchs_kernel_bit_for_bit(paths, dtype):
    """The commonest call (`functional.cross_entropy`'s inline rule 2): every argument torch has, on the shapes torch takes, gives
    torch's loss and gradient bit for bit, through torch's kernel called once."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    shapes = [((8, 5), (8,)), ((5,), ()), ((2, 5, 3, 3), (2, 3, 3))]
    for (xs, ts) in shapes:
        c = xs[0] if len(xs) == 1 else xs[1]
        x = torch.randn(*xs, generator=gen, dtype=dtype)
        index = torch.randint(0, c, ts, generator=gen)
        probs = torch.rand(*xs, generator=gen, dtype=dtype).softmax(0 if len(xs) == 1 else 1)
        for target in (index, probs):
            for weight in (None, torch.rand(c, generator=gen, dtype=dtype)):
                for reduction in ("none", "mean", "sum"):
                    for ignore_index in (-100, 1) if target is index else (-100,):  # (torch refuses it)
                        for smoothing in (0.0, 0.2):
                            kw = dict(weight=weight, reduction=reduction, ignore_index=ignore_index,
                                      label_smoothing=smoothing)
                            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
                            del paths[:]
                            got, want = crossent.cross_entropy(a, target, **kw), F.cross_entropy(b, target, **kw)
                            assert paths == ["torch"], (xs, kw)
                            assert torch.equal(got, want), (xs, kw)
                            got.sum().backward()
                            want.sum().backward()
                            assert torch.equal(a.grad, b.grad), (xs, kw)


def test_the_plain_small_call_leaves_overrides_to_torchs_wrapper():
    """Under a __torch_function__ mode torch's kernel is not called behind the mode's back: the
    mode sees cross_entropy, as it does for F.cross_entropy."""
    seen = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with Mode():
        got = crossent.cross_entropy(x, t)
    assert "cross_entropy" in seen
    assert torch.equal(got, torch.nn.functional.cross_entropy(x, t))


@pytest.mark.parametrize("call, message", [
    (lambda x, t: crossent.cross_entropy(x, t, reduction="average"), "reduction"),
    (lambda x, t: crossent.cross_entropy(x, t, label_smoothing=1.5), "label_smoothing"),
    (lambda x, t: crossent.cross_entropy(x, t[:2]), "target"),
    (lambda x, t: crossent.cross_entropy(x, t.float()), "target"),
])
def test_the_plain_small_call_leaves_bad_arguments_to_the_checks(call, message):
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises((ValueError, RuntimeError), match=message):
        call(x, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plain_small_linear_call_is_torchs_composition_bit_for_bit(paths, dtype):
    """`plain_linear_cross_entropy_on_torch`: every argument torch's composition has gives its
    loss and gradients bit for bit, through torch's kernel called once."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    n, d, v = 6, 4, 5
    x, w, b = (torch.randn(*s, generator=gen, dtype=dtype) for s in ((n, d), (v, d), (v,)))
    index = torch.randint(0, v, (n,), generator=gen)
    probs = torch.rand(n, v, generator=gen, dtype=dtype).softmax(1)
    for target in (index, probs):
        for bias in (None, b):
            for weight in (None, torch.rand(v, generator=gen, dtype=dtype)):
                for reduction in ("none", "mean", "sum"):
                    for ignore_index in (None, 1) if target is index else (None,):
                        for smoothing in (0.0, 0.2):
                            ours, theirs = [[t.clone().requires_grad_() if t is not None else None for t in (x, w, bias)]
                                            for _ in range(2)]
                            del paths[:]
                            got = crossent.linear_cross_entropy(
                                ours[0], ours[1], target, linear_bias=ours[2], weight=weight, reduction=reduction,
                                ignore_index=ignore_index, label_smoothing=smoothing)
                            want = F.cross_entropy(
                                F.linear(theirs[0], theirs[1], theirs[2]), target, weight=weight,
                                reduction=reduction, ignore_index=-100 if ignore_index is None else ignore_index,
                                label_smoothing=smoothing)
                            assert paths == ["torch"]
                            assert torch.equal(got, want)
                            got.sum().backward()
                            want.sum().backward()
                            for a, c in zip(ours, theirs):
                                assert a is None or torch.equal(a.grad, c.grad)


def test_the_plain_small_linear_call_leaves_overrides_to_torchs_wrappers():
    seen = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    x, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 4])
    with Mode():
        got = crossent.linear_cross_entropy(x, w, t)
    assert "linear" in seen and "cross_entropy" in seen
    assert torch.equal(got, torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w), t))


@pytest.mark.parametrize("call, message", [
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, t, reduction="average"), "reduction"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, t, label_smoothing=-0.5), "label_smoothing"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, t[:2]), "target"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w[:, :2], t), "linear_weight"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, t.float()), "target"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, t, linear_bias=torch.zeros(3)), "linear_bias"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w.double(), t), "dtype"),
    (lambda x, w, t: crossent.linear_cross_entropy(x, w, torch.rand(4, 5), ignore_index=1),
     "ignore_index"),
])
def test_the_plain_small_linear_call_leaves_bad_arguments_to_the_checks(call, message):
    x, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 4])
    with pytest.raises((ValueError, RuntimeError, TypeError), match=message):
        call(x, w, t)


@pytest.mark.parametrize("where", ["linear_weight", "linear_bias", "target", "weight"])
def test_the_plain_small_linear_call_names_a_tensor_on_another_device(where):
    """A CPU input with one tensor on the meta device: torch would compute F.linear of a CPU input
    and a meta weight silently; crossent names the tensor and the remedy."""
    kw = dict(x=torch.randn(4, 3), linear_weight=torch.randn(5, 3), target=torch.tensor([0, 1, 2, 4]),
              linear_bias=torch.randn(5), weight=torch.rand(5))
    kw[where] = kw[where].to("meta")
    with pytest.raises(ValueError, match=f"{where} is on meta but input is on cpu"):
        crossent.linear_cross_entropy(kw["x"], kw["linear_weight"], kw["target"], linear_bias=kw["linear_bias"],
                                      weight=kw["weight"])


def test_k_dim_inputs_have_their_own_crossover(paths):
    """(N, C, d1..dk) with a gradient: torch's kernel up to KDIM_TORCH_MAX_NUMEL (8192 here),
    where a 2-D input of the same size is already fused; above it fused; log-probabilities'
    leading dimensions are not K-dim."""
    kdim = torch.randn(2, 12, 16, 16, requires_grad=True)  # 6144 elements
    crossent.cross_entropy(kdim, torch.randint(0, 12, (2, 16, 16))).sum().backward()
    assert paths == ["torch"]
    del paths[:]
    flat = torch.randn(512, 12, requires_grad=True)  # 6144 elements
    crossent.cross_entropy(flat, torch.randint(0, 12, (512,))).backward()
    assert paths == ["fused"]
    del paths[:]
    big = torch.randn(2, 12, 32, 32, requires_grad=True)  # 24576 elements
    crossent.cross_entropy(big, torch.randint(0, 12, (2, 32, 32))).backward()
    assert paths == ["fused"]


def test_k_dim_inputs_of_at_most_four_classes_take_torchs_kernel_at_every_size(paths):
    for c, expected in ((2, "torch"), (4, "torch"), (5, "fused")):
        del paths[:]
        x = torch.randn(2, c, 64, 64, requires_grad=True)  # above every pinned threshold
        crossent.cross_entropy(x, torch.randint(0, c, (2, 64, 64))).backward()
        assert paths == [expected], c
