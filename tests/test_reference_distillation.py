"""The distillation reference (src/crossent/_reference_distillation.py) stays independent of
torch's implementations, as crossent.reference does (the same banned names), and is what
crossent.reference exports."""

from __future__ import annotations

import ast
import inspect

import pytest
from test_reference import BANNED

from crossent import _reference_distillation, _reference_softmax, reference


@pytest.mark.parametrize("module", [_reference_distillation, _reference_softmax], ids=lambda m: m.__name__)
def test_the_distillation_reference_uses_only_elementary_ops(module):
    tree = ast.parse(inspect.getsource(module))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not used & BANNED


def test_crossent_reference_exports_it():
    assert reference.linear_distillation_loss is _reference_distillation.linear_distillation_loss
    assert reference.linear_topk_distillation_loss is _reference_distillation.linear_topk_distillation_loss
