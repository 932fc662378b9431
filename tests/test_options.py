"""LossOptions travel to the custom ops of torch.compile as one string: every field, exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossent._options import LossOptions

# a value other than the default for each field, by name (a new field must be added here)
NON_DEFAULT = dict(
    ignore_index=7, reduction="sum", label_smoothing=0.125, z_loss=1e-4, softcap=30.0,
    normalizer=2.5, inplace_backward=True, soft=True, dtype=torch.float32, chunk_size=64,
    allow_retain_graph=True,
)


def test_every_field_has_a_test_value():
    assert {f.name for f in dataclasses.fields(LossOptions)} == set(NON_DEFAULT)


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_field_survives_the_encoding_alone(name):
    """Changing one field changes the string, and decoding gives it back: no field is dropped."""
    opts = LossOptions(**{name: NON_DEFAULT[name]})
    assert opts.encode() != LossOptions().encode()
    assert LossOptions.decode(opts.encode()) == opts


def test_all_fields_together_and_a_tensor_normalizer():
    opts = LossOptions(**NON_DEFAULT)
    assert LossOptions.decode(opts.encode()) == opts
    n = torch.tensor(5.0)
    with_tensor = dataclasses.replace(opts, normalizer=n)
    decoded = LossOptions.decode(with_tensor.encode(), n)
    assert decoded.normalizer is n and dataclasses.replace(decoded, normalizer=None) == dataclasses.replace(opts, normalizer=None)


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-300, 123456789.125, float("inf")])
def test_floats_round_trip_exactly(value):
    opts = LossOptions(label_smoothing=value, z_loss=value)
    back = LossOptions.decode(opts.encode())
    assert back.label_smoothing == value and back.z_loss == value


def test_the_encoding_compiles_to_a_constant():
    opts = LossOptions(**NON_DEFAULT)
    f = torch.compile(lambda x: x * len(opts.encode()), fullgraph=True, backend="eager")
    assert f(torch.ones(1)).item() == len(opts.encode())
