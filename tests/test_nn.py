"""crossent.nn modules: torch's constructor arguments, buffers, and the seed tutorial's loop."""

from __future__ import annotations

import warnings

import pytest
import torch

import crossent
from conftest import assert_close

PAIRS = [
    (crossent.nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss),
    (crossent.nn.NLLLoss, torch.nn.NLLLoss),
    (crossent.nn.BCELoss, torch.nn.BCELoss),
    (crossent.nn.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss),
]


def _inputs(cls):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    if cls in (crossent.nn.CrossEntropyLoss, crossent.nn.NLLLoss):
        x = x.log_softmax(1) if cls is crossent.nn.NLLLoss else x
        return x, torch.randint(0, 4, (6,), generator=gen)
    if cls is crossent.nn.BCELoss:
        return x.sigmoid(), torch.rand(6, 4, generator=gen, dtype=torch.float64)
    return x, torch.rand(6, 4, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_modules_match_torch(ours, theirs, reduction):
    x, t = _inputs(ours)
    w = torch.rand(4, dtype=torch.float64) + 0.1
    a, b = ours(weight=w, reduction=reduction), theirs(weight=w, reduction=reduction)
    assert_close(a(x, t), b(x, t))
    assert "weight" in dict(a.named_buffers())
    assert set(a.state_dict()) == set(b.state_dict())


def test_module_buffers_follow_to_and_state_dict():
    loss = crossent.nn.BCEWithLogitsLoss(pos_weight=torch.ones(3), weight=torch.ones(3))
    loss = loss.to(torch.float64)
    assert loss.pos_weight.dtype == torch.float64 and loss.weight.dtype == torch.float64
    assert set(loss.state_dict()) == {"weight", "pos_weight"}


def test_module_legacy_arguments_warn_at_construction_like_torch():
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        a = crossent.nn.CrossEntropyLoss(size_average=False)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        b = torch.nn.CrossEntropyLoss(size_average=False)
    assert a.reduction == b.reduction == "sum"
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]


def test_cross_entropy_module_extensions_are_keyword_only():
    with pytest.raises(TypeError):
        crossent.nn.CrossEntropyLoss(None, None, -100, None, "mean", 0.0, 1e-3)
    loss = crossent.nn.CrossEntropyLoss(z_loss=1e-3, softcap=30.0)
    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert_close(loss(x, t), crossent.cross_entropy(x, t, z_loss=1e-3, softcap=30.0))


def _tutorial(criterion_cls):
    """The seed tutorial (001): SimpleNN = Linear(1, 2), SGD lr=0.01, 1000 epochs."""
    torch.manual_seed(0)
    data = torch.tensor([[2, 0], [5, 1], [8, 0], [12, 0], [15, 1], [17, 1]], dtype=torch.float32)
    X, y = data[:, 0].unsqueeze(1), data[:, 1]
    model = torch.nn.Linear(1, 2)
    criterion = criterion_cls()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(1000):
        optimizer.zero_grad()
        loss = criterion(model(X), y.long())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_seed_tutorial_trains_identically_to_torch():
    ours, ours_params = _tutorial(crossent.nn.CrossEntropyLoss)
    theirs, theirs_params = _tutorial(torch.nn.CrossEntropyLoss)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_params, theirs_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
