"""crossent follows the torch it runs on (src/crossent/_torch_version.py): the linear loss's
``options`` are checked by the installed torch's own LinearCrossEntropyOptions (torch 2.13 accepts
acc_policy="balanced", torch 2.14 refuses it), crossent's equivalent class stands in where torch
has none (torch < 2.13), and options from any of them give torch's values on every version.
scripts/test-torch runs this file on each torch of the README's tested-torch table."""

from __future__ import annotations

import dataclasses
import pickle
import re
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close
from crossent import _checks, _torch_version
from linear_helpers import leaves, make, unfused

TORCH_OPTIONS = getattr(torch.nn, "LinearCrossEntropyOptions", None)
OURS = _torch_version._LinearCrossEntropyOptions

# torch 2.14's LinearCrossEntropyOptions: (name, default) of each field, in order.
FIELDS_2_14 = [("allow_retain_graph", False), ("batch_chunk_size", None), ("chunking_method", "auto"),
               ("acc_policy", "auto"), ("acc_dtype", None)]

# (field, value, accepted by torch 2.14's class)
VALUES_2_14 = [
    ("acc_policy", "auto", True), ("acc_policy", "accurate", True), ("acc_policy", "compact", True),
    ("acc_policy", "balanced", False), ("acc_policy", "fast", False), ("acc_policy", None, False),
    ("chunking_method", None, True), ("chunking_method", "auto", True),
    ("chunking_method", "aspect_ratio", True), ("chunking_method", "aspect_ratio:3", True),
    ("chunking_method", "aspect_ratio:0", False), ("chunking_method", "aspect_ratio:x", False),
    ("chunking_method", "rows", False),
    ("batch_chunk_size", None, True), ("batch_chunk_size", 8, True), ("batch_chunk_size", 0, False),
    ("batch_chunk_size", 2.5, False),
    ("acc_dtype", None, True), ("acc_dtype", torch.bfloat16, True), ("acc_dtype", torch.float64, True),
    ("acc_dtype", torch.int32, False),
]


def _fields(**overrides):
    return {**dict(FIELDS_2_14), **overrides}


def _torch_accepts(**fields) -> bool:
    try:
        _torch_version.LinearCrossEntropyOptions(**_fields(**fields))
        return True
    except ValueError:
        return False


def test_torch_version_is_parsed():
    assert _torch_version.TORCH == _torch_version.parse(torch.__version__)
    assert _torch_version.parse("2.14.1+cu130") == (2, 14, 1)
    assert _torch_version.parse("2.6.0a0+git1234abc") == (2, 6, 0)
    assert _torch_version.parse("2.10") == (2, 10, 0)


def test_the_options_class_is_torchs_where_torch_has_one():
    cls = crossent.nn.LinearCrossEntropyOptions
    if TORCH_OPTIONS is not None:
        assert cls is TORCH_OPTIONS
    else:
        assert cls is OURS
        assert (cls.__module__, cls.__name__) == ("crossent.nn", "LinearCrossEntropyOptions")
    assert "LinearCrossEntropyOptions" in crossent.nn.__all__
    # torch 2.13 is the first torch with the whole API; crossent's functions exist on every torch
    assert (TORCH_OPTIONS is not None) == _torch_version.HAS_LINEAR_CROSS_ENTROPY == (
        _torch_version.TORCH >= (2, 13))


def test_crossents_class_has_torch_2_14s_fields():
    assert [(f.name, f.default) for f in dataclasses.fields(OURS)] == FIELDS_2_14
    if _torch_version.TORCH >= (2, 14):
        assert [(f.name, f.default) for f in dataclasses.fields(TORCH_OPTIONS)] == FIELDS_2_14
    with pytest.raises(dataclasses.FrozenInstanceError):
        OURS().acc_policy = "compact"
    assert pickle.loads(pickle.dumps(OURS(batch_chunk_size=4))) == OURS(batch_chunk_size=4)


@pytest.mark.parametrize("field,value,accepted", VALUES_2_14, ids=lambda x: repr(x))
def test_crossents_class_checks_as_torch_2_14(field, value, accepted):
    if accepted:
        assert getattr(OURS(**{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=rf"LinearCrossEntropyOptions: {field} must be"):
            OURS(**{field: value})
    if _torch_version.TORCH >= (2, 14):  # the same verdict as torch's own class
        assert _torch_accepts(**{field: value}) == accepted


@pytest.mark.parametrize("policy", ["auto", "accurate", "compact", "balanced", "fast"])
def test_acc_policy_is_accepted_exactly_when_the_installed_torch_accepts_it(policy):
    """The version-dependent case: "balanced" is valid on torch 2.13 (and crossent's checks then
    take it), invalid from 2.14 on and where crossent's own class stands in."""
    expected = {"balanced": _torch_version.TORCH[:2] == (2, 13), "fast": False}.get(policy, True)
    assert _torch_accepts(acc_policy=policy) == expected
    options = types.SimpleNamespace(**_fields(acc_policy=policy))  # an options-like object
    x, w, b, t = make(8, 4, 10, seed=3)
    if expected:
        crossent.linear_cross_entropy(x, w, t, linear_bias=b, options=options)
    else:
        with pytest.raises(ValueError, match=rf"linear_cross_entropy: options .*acc_policy='{policy}'.* "
                           rf"are not valid on torch {re.escape(torch.__version__)}") as err:
            crossent.linear_cross_entropy(x, w, t, linear_bias=b, options=options)
        assert isinstance(err.value, RuntimeError)  # (crossent's errors are torch's type too)


def test_options_of_another_torch_version_are_checked_by_this_one():
    """An options object made under another torch (unpickled: no __post_init__ runs) meets this
    torch's checks: a torch 2.13 "balanced" is refused on 2.14, as torch's class would."""
    cls = _torch_version.LinearCrossEntropyOptions
    stale = cls()
    object.__setattr__(stale, "acc_policy", "balanced")  # what unpickling a 2.13 object gives
    x, w, b, t = make(8, 4, 10, seed=4)
    if _torch_accepts(acc_policy="balanced"):
        crossent.linear_cross_entropy(x, w, t, linear_bias=b, options=stale)
    else:
        with pytest.raises(ValueError, match="acc_policy='balanced'"):
            crossent.linear_cross_entropy(x, w, t, linear_bias=b, options=stale)


@pytest.mark.parametrize("make_options", [
    lambda **kw: crossent.nn.LinearCrossEntropyOptions(**kw),
    lambda **kw: OURS(**kw),
    lambda **kw: types.SimpleNamespace(**_fields(**kw)),
], ids=["exported", "crossents", "duck"])
@pytest.mark.parametrize("fields", [
    {}, {"batch_chunk_size": 3}, {"chunking_method": "aspect_ratio:2"}, {"chunking_method": None},
    {"allow_retain_graph": True, "acc_policy": "accurate"},
])
@pytest.mark.parametrize("soft,reduction", [(False, "mean"), (True, "sum"), (True, "none")])
def test_every_options_object_gives_torchs_values_on_this_torch(make_options, fields, soft, reduction):
    """Options of any origin, on every torch: the composition's values and gradients (and
    F.linear_cross_entropy's where torch has it). crossent never ignores options, so it never
    warns as torch does where its chunked path cannot take them (probability targets with
    'none' on 2.14, with any reduction on 2.13)."""
    options = make_options(**fields)
    x, w, b, t = make(12, 5, 30, soft=soft, seed=5)
    xa, xr = leaves(x, x)
    with crossent.use_backend(crossent.Backend.FUSED), warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = crossent.linear_cross_entropy(xa, w, t, linear_bias=b, reduction=reduction, options=options)
    ref = unfused(xr, w, t, b, ce=F.cross_entropy, reduction=reduction)
    assert_close(ours, ref)
    g = torch.linspace(0.5, 1.5, ours.numel()).reshape(ours.shape)
    grad_ref = torch.autograd.grad(ref, xr, g)[0]
    assert_close(torch.autograd.grad(ours, xa, g)[0], grad_ref)
    if _torch_version.HAS_LINEAR_CROSS_ENTROPY and isinstance(options, TORCH_OPTIONS):
        xt = x.detach().clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch warns where it falls back)
            theirs = F.linear_cross_entropy(xt, w, t, linear_bias=b, reduction=reduction, options=options)
        assert_close(ours, theirs)
        assert_close(grad_ref, torch.autograd.grad(theirs, xt, g)[0])


# (fields, N, D, V, rows per chunk): torch's resolution of explicit chunking fields (2.13 and 2.14
# agree on these; `_adjust` of torch 2.14.1 printed them). "auto" without a size is crossent's own
# rule on every torch (None here): see the next test.
CHUNKS = [
    ({"batch_chunk_size": 4}, 40, 8, 100, 4),
    ({"batch_chunk_size": 64}, 40, 8, 100, 40),
    ({"chunking_method": None}, 40, 8, 100, 40),
    ({"chunking_method": None, "batch_chunk_size": 7}, 40, 8, 100, 7),
    ({"chunking_method": "aspect_ratio"}, 40, 8, 100, 4),
    ({"chunking_method": "aspect_ratio:2"}, 2048, 512, 128256, 8),
    ({"chunking_method": "aspect_ratio:4"}, 7, 64, 32, 2),
    ({"chunking_method": "aspect_ratio"}, 1000, 3, 5, 512),
    ({"chunking_method": "aspect_ratio", "batch_chunk_size": 4}, 40, 8, 100, 4),
]


@pytest.mark.parametrize("fields,n,d,v,rows", CHUNKS)
def test_explicit_chunking_fields_give_torchs_chunk_size(fields, n, d, v, rows):
    for options in (OURS(**fields), crossent.nn.LinearCrossEntropyOptions(**fields)):
        assert _checks.linear_chunking("f", "mean", None, None, options, n, d, v)[0] == rows
    if TORCH_OPTIONS is not None:
        adjusted = TORCH_OPTIONS(**fields)._adjust(n, d, v, torch.float32, torch.device("cpu"))
        assert adjusted.batch_chunk_size == rows


def test_explicit_chunking_fields_that_disagree_are_refused():
    options = crossent.nn.LinearCrossEntropyOptions(chunking_method="aspect_ratio", batch_chunk_size=5)
    with pytest.raises(ValueError, match=r"batch_chunk_size=5 and chunking_method='aspect_ratio' give "
                       r"different chunk sizes \(5 vs 4\)"):
        _checks.linear_chunking("f", "mean", None, None, options, 40, 8, 100)
    if TORCH_OPTIONS is not None:  # as torch refuses them
        with pytest.raises(ValueError, match="give different chunk sizes"):
            options._adjust(40, 8, 100, torch.float32, torch.device("cpu"))


def test_auto_chunking_is_crossents_measured_rule_on_every_torch():
    """torch resolves "auto" differently per version (2.13: a (device, dtype) table; 2.14:
    aspect_ratio capped at its reference peak); crossent's own rule replaces it on all of them."""
    options = crossent.nn.LinearCrossEntropyOptions()
    assert _checks.linear_chunking("f", "mean", None, None, options, 2048, 512, 128256) == (None, False)
    assert _checks.linear_chunking("f", "mean", None, None, OURS(allow_retain_graph=True), 8, 4, 10) == (
        None, True)



# LinearCrossEntropyOptions objects pickled by torch 2.13.0 and torch 2.14.1 (pickle protocol 4;
# `pickle.dumps(torch.nn.LinearCrossEntropyOptions(**fields), protocol=4)`, base64): the objects
# a checkpoint or a config carries from one torch to the other. Both versions pickle the fields
# they share to the same bytes; "balanced" exists only in 2.13's.
_PICKLE_HEAD = "gASV{}AAAAAAAAACMLXRvcmNoLm5uLm1vZHVsZXMubGluZWFyX2Nyb3NzX2VudHJvcHlfb3B0aW9uc5SMGUxpbmVhckNyb3NzRW50cm9weU9wdGlvbnOUk5QpgZRdlCi"
PICKLED = {
    "2.13+2.14 defaults": ("Y", "JTowEYXV0b5RoBU5lYi4="),
    "2.13 acc_policy=balanced": ("b", "JTowEYXV0b5SMCGJhbGFuY2VklE5lYi4="),
    "2.14 acc_policy=compact": ("a", "JTowEYXV0b5SMB2NvbXBhY3SUTmViLg=="),
    "2.13+2.14 aspect_ratio:2, allow_retain_graph": ("c", "ITowOYXNwZWN0X3JhdGlvOjKUjARhdXRvlE5lYi4="),
    "2.13+2.14 batch_chunk_size=3, accurate, float64": (
        "g", "JSwOMBGF1dG+UjAhhY2N1cmF0ZZSMBXRvcmNolIwHZmxvYXQ2NJSTlGViLg=="),
}


def _unpickle(name):
    import base64

    size, tail = PICKLED[name]
    return pickle.loads(base64.b64decode(_PICKLE_HEAD.format(size) + tail))


@pytest.mark.skipif(TORCH_OPTIONS is None, reason="torch without LinearCrossEntropyOptions (< 2.13)")
@pytest.mark.parametrize("name", list(PICKLED))
@pytest.mark.parametrize("soft,reduction", [(False, "mean"), (False, "none"), (True, "mean"),
                                            (True, "sum"), (True, "none")])
def test_options_pickled_by_torch_2_13_and_2_14_give_torchs_values_and_errors(name, soft, reduction):
    """An options object of either version, on the installed torch: where this torch refuses it
    (2.13's "balanced" on 2.14), crossent refuses it with torch's ValueError; else crossent's fused
    values and gradients equal F.linear_cross_entropy's with that object (and where torch's chunked
    path refuses an acc_dtype for this call, crossent refuses it with torch's message). Unlike
    torch, which never looks at the options of a call it does not chunk, crossent checks them on
    every call, since it uses them on every call. The shapes take torch's
    chunked path (N >= D, C > D) for class indices and, from 2.14 on, for probability targets
    with 'mean'/'sum' (a target of the input's dtype, no grad); 2.13 (and 2.14 for 'none')
    materialises the logits there and warns that the options are ignored. crossent runs its
    fused kernel for all of them, without that warning."""
    options = _unpickle(name)
    assert isinstance(options, TORCH_OPTIONS)
    # torch 2.14 refuses "balanced"; the chunked path of both refuses acc_dtype=float64 with
    # float32 inputs (probability targets take it on 2.14, with 'mean' and 'sum')
    chunked = not soft or (_torch_version.TORCH >= (2, 14) and reduction != "none")
    refused = ((options.acc_policy == "balanced" and _torch_version.TORCH >= (2, 14))
               or (options.acc_dtype == torch.float64 and chunked))
    x, w, b, t = make(300, 8, 1000, soft=soft, seed=7)
    xa, wa, ba = leaves(x, w, b)
    xt, wt, bt = leaves(x, w, b)
    if options.acc_policy == "balanced" and _torch_version.TORCH >= (2, 14) and not chunked:
        # torch ignores the options there, unchecked; crossent uses them on every call, so it
        # checks them on every call
        with pytest.raises(ValueError, match="acc_policy='balanced'"):
            crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, reduction=reduction, options=options)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch warns where it ignores the options)
            theirs = F.linear_cross_entropy(xt, wt, t, linear_bias=bt, reduction=reduction, options=options)
    except (ValueError, RuntimeError) as err:
        with pytest.raises(type(err), match=re.escape(str(err))):
            crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, reduction=reduction, options=options)
        assert refused, err
        return
    assert not refused
    with crossent.use_backend(crossent.Backend.FUSED), warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, reduction=reduction, options=options)
    assert_close(ours, theirs)
    g = torch.linspace(0.5, 1.5, ours.numel()).reshape(ours.shape)
    for mine, torchs in zip(torch.autograd.grad(ours, (xa, wa, ba), g),
                            torch.autograd.grad(theirs, (xt, wt, bt), g)):
        assert_close(mine, torchs)


@pytest.mark.skipif(_torch_version.TORCH < (2, 14), reason="torch 2.14's rules")
def test_torch_2_14_chunks_exactly_the_inputs_its_docs_name():
    """What this suite assumes of torch 2.14 (its docs, PRs #187838 and #187053): probability
    targets with 'mean'/'sum' take the chunked path (no "options ignored" warning; a second
    backward without allow_retain_graph is torch's chunked-backward error), 'none' still falls
    back with the warning; acc_policy "auto" resolves to "compact" except for 16-bit inputs on
    the CPU ("accurate"), and "auto" chunking to aspect_ratio capped at the reference's peak."""
    x, w, b, t = make(300, 8, 1000, soft=True, seed=8)
    options = TORCH_OPTIONS()
    for reduction, falls_back in (("mean", False), ("sum", False), ("none", True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xt = x.detach().clone().requires_grad_()
            F.linear_cross_entropy(xt, w, t, linear_bias=b, reduction=reduction, options=options)
        assert any("options`` ignored" in str(m.message) for m in caught) == falls_back, reduction
    loss = F.linear_cross_entropy(xt, w, t, linear_bias=b, options=options)
    loss.backward()
    with pytest.raises(RuntimeError, match="chunked backward called twice"):
        loss.backward()
    cpu = torch.device("cpu")
    for dtype, policy in ((torch.float32, "compact"), (torch.bfloat16, "accurate"), (torch.float16, "accurate")):
        assert options._adjust(2048, 512, 32000, dtype, cpu).acc_policy == policy
    # aspect_ratio (next_pow2(ceil(2048 / ceil(32000 / 512)))) = 64 rows, under the cap
    assert options._adjust(2048, 512, 32000, torch.float32, cpu).batch_chunk_size == 64
    # D >= C (the budget regime): capped at N * C / (4 D) rows (a power of two), N / 2 for probabilities
    assert options._adjust(256, 1024, 512, torch.float32, cpu).batch_chunk_size == 32
    assert options._adjust(256, 1024, 512, torch.float32, cpu, prob_target=True).batch_chunk_size == 128
