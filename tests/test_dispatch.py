"""Which path each documented kind of input takes (the rule in _dispatch.py), pinned."""

from __future__ import annotations

import pytest
import torch

import crossent
from crossent import _dispatch
from crossent.backends import torch_chunked


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch):
    """Pin the rule's logic with small thresholds (the real ones are measured crossovers)."""
    monkeypatch.setattr(_dispatch, "TORCH_MAX_NUMEL", 4096)
    monkeypatch.setattr(_dispatch, "TORCH_MAX_NUMEL_NO_GRAD", 16384)
    monkeypatch.setattr(_dispatch, "BINARY_TORCH_MAX_NUMEL", 4096)


@pytest.fixture
def paths(monkeypatch):
    """Record which backend ran: torch's functional, crossent's fused kernels, or the reference."""
    seen = []
    import crossent.functional as fn

    class Spy:
        def __getattr__(self, name):
            real = getattr(torch.nn.functional, name)

            def call(*a, **k):
                seen.append("torch")
                return real(*a, **k)
            return call

    monkeypatch.setattr(fn, "_torch_F", Spy())
    for name in ("_torch_cross_entropy", "_torch_nll_loss", "_ce_kernel"):
        real = getattr(fn, name)
        monkeypatch.setattr(fn, name, lambda *a, _r=real, **k: (seen.append("torch"), _r(*a, **k))[1])
    for name in ("cross_entropy", "nll_loss", "binary_cross_entropy"):
        real = getattr(torch_chunked, name)
        monkeypatch.setattr(torch_chunked, name, lambda *a, _r=real, **k: (seen.append("fused"), _r(*a, **k))[1])
    for name in ("cross_entropy", "binary_cross_entropy_with_logits"):
        real = getattr(fn.reference, name)
        monkeypatch.setattr(fn.reference, name, lambda *a, _r=real, **k: (seen.append("reference"), _r(*a, **k))[1])
    return seen


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
        (lambda: crossent.binary_cross_entropy_with_logits(_x(64, 128), torch.rand(64, 128)), "fused"),
        # large, with a gradient the fused kernel does not give (probability target): reference
        (lambda: crossent.cross_entropy(_x(64, SMALL), torch.rand(64, SMALL).softmax(1).requires_grad_()), "reference"),
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


def test_probability_targets_and_binary_losses_on_torch_reduce_in_a_fixed_order(paths):
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    t = torch.rand(8, 5, dtype=torch.float64).softmax(1)
    ours = crossent.cross_entropy(x, t)
    assert paths == ["torch"]
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(x, t), rtol=1e-12, atol=1e-12)
    y = torch.rand(8, 5, dtype=torch.float64)
    ours = crossent.binary_cross_entropy_with_logits(x, y, reduction="sum")
    torch.testing.assert_close(ours, torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="sum"))


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
    table = readme.split("### Which implementation runs", 1)[1].split("## Benchmarks", 1)[0]
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert listed == {b.value for b in crossent.Backend}
