"""The cases the ranks of `harness.py` run: each builds the full problem from a fixed seed (so every
rank holds the same full tensors), gives crossent.distributed this rank's slice, and compares the
value and this rank's gradients with single-process crossent (and torch where torch has the
option) in float64. Registered with `case`; `names(world)` lists them without a process group."""

from __future__ import annotations

import itertools

import torch

CASES: list[tuple[str, tuple[int, ...], object]] = []


def case(*worlds: int):
    def register(fn):
        CASES.append((fn.__name__, worlds, fn))
        return fn
    return register


def names(world: int) -> list[str]:
    _load()
    return [n for n, worlds, _ in CASES if world in worlds]


def applicable(world: int):
    _load()
    return [(n, fn) for n, worlds, fn in CASES if world in worlds]


def _load():
    import cases_ce  # noqa: F401  (registering modules)
    import cases_distill  # noqa: F401
    import cases_dtensor  # noqa: F401
    import cases_linear  # noqa: F401
    import cases_linear_dtensor  # noqa: F401
    import cases_log_probs  # noqa: F401
    import cases_log_probs_dtensor  # noqa: F401
    import cases_torchtitan  # noqa: F401


# ----------------------------------------------------------------------------- helpers

F64 = dict(atol=1e-11, rtol=1e-10)


def raises(call, exc, pattern):
    """call() raises exc with ``pattern`` in its message (in a rank: no pytest there)."""
    try:
        call()
    except exc as err:
        assert pattern in str(err), str(err)
    else:
        raise AssertionError(f"accepted: {pattern}")


def close(actual, expected, what: str, **tol):
    torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True,
                               msg=lambda m: f"{what}: {m}", **(tol or F64))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vocab_slice(num_classes: int, world: int, rank: int) -> slice:
    """torch.chunk's / DTensor's layout: ceil(C / W) per rank, empty trailing shards."""
    per = -(-num_classes // world)
    start = min(rank * per, num_classes)
    return slice(start, min(start + per, num_classes))


def targets(g, shape, num_classes, ignore_every=4, ignore_index=-100):
    t = torch.randint(0, num_classes, shape, generator=g)
    flat = t.view(-1)
    flat[::ignore_every] = ignore_index  # some ignored samples
    return t


def probabilities(g, shape, class_dim=1):
    return torch.rand(shape, generator=g, dtype=torch.float64).softmax(class_dim)


def grid(**axes):
    keys = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(keys, values))


def torch_has(opts: dict) -> bool:
    return not opts.get("z_loss") and opts.get("softcap") is None and opts.get("normalizer") is None
