"""crossent's public names: ``__all__`` (a literal list, for type checkers: the package is
py.typed), the lazy ``_EXPORTS`` table and crossent.functional's ``__all__`` name the same
functions, so the three lists cannot drift apart."""

from __future__ import annotations

import crossent
import crossent.functional


def test_all_is_the_lazy_table_plus_the_nn_module():
    assert len(crossent.__all__) == len(set(crossent.__all__))
    assert set(crossent.__all__) == set(crossent._EXPORTS) | {"nn"}


def test_every_public_name_resolves():
    for name in crossent.__all__:
        assert getattr(crossent, name) is not None, name


def test_functional_names_are_crossent_names():
    assert len(crossent.functional.__all__) == len(set(crossent.functional.__all__))
    for name in crossent.functional.__all__:
        assert name in crossent.__all__, name
        assert getattr(crossent, name) is getattr(crossent.functional, name), name
