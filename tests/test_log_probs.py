"""crossent.log_probs and crossent.linear_log_probs against a float64 torch composition.

The oracle is written here with torch's own ops in float64 (F.linear, log_softmax, gather, the
entropy from the same log_softmax, 0 log 0 = 0), independent of crossent's row math and of its
reference module. The loss differentiated is a combined one -- random weights on the log-probs
AND on the entropies, as a policy-gradient term plus an entropy bonus -- so every gradient path
of both outputs is checked, over temperature x softcap x bias x ignored rows x leading dims, at
a small size (torch's composition runs on auto) and at a size where crossent's fused kernels run,
on every backend (the `on_backend` fixture). Criterion: no worse than torch's float32
composition against the float64 truth -- elementwise for the two outputs
(conftest.assert_no_worse_than_torch); for the gradients, which are sums over thousands of
classes or tokens rounded in another order than torch's (MKL's blocking, the chunks), by the
worst error over the tensor (`no_worse_overall`): elementwise, one of 300 long sums may round
luckier in torch's order.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import TOL, assert_no_worse_than_torch, sampled


def no_worse_overall(ours, theirs, ref64, dtype):
    """max |ours - ref64| <= max |torch - ref64| + atol + rtol * max |ref64|."""
    ours, theirs, ref64 = ours.double(), theirs.double(), ref64.double()
    assert torch.isfinite(ours).all() == torch.isfinite(ref64).all()
    tol = TOL[dtype]
    err, bound = (ours - ref64).abs().max(), (theirs - ref64).abs().max() + tol["atol"] + tol["rtol"] * ref64.abs().max()
    assert err <= bound, f"worst error {err:.3e} over torch's worst {bound:.3e}"


def compare(got, theirs, truth, dtype=torch.float32):
    """log_probs and entropy elementwise; the gradients by their worst error."""
    for i, (ours_, theirs_, ref) in enumerate(zip(got, theirs, truth)):
        assert ours_.shape == ref.shape
        (assert_no_worse_than_torch if i < 2 else no_worse_overall)(ours_, theirs_, ref, dtype)


def composition(logits, target, temperature=1.0, softcap=None, ignore_index=-100):
    """TRL's selective_log_softmax + entropy_from_logits, in the logits' dtype (float64 for the
    oracle): (log_probs, entropy), 0 on ignored positions."""
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    log_p = F.log_softmax(z / temperature, -1)
    valid = target != ignore_index
    lp = log_p.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    h = -(p * torch.where(p > 0, log_p, 0.0)).sum(-1)
    return torch.where(valid, lp, 0.0), torch.where(valid, h, 0.0)


def problem(lead, v, d, *, bias, ignored, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * (scale / d**0.5)
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    t = torch.randint(0, v, lead, generator=gen)
    if ignored:
        t[torch.rand(lead, generator=gen) < ignored] = -100
    a = torch.randn(lead, generator=gen, dtype=torch.float64)  # weights of the log-probs
    c = torch.randn(lead, generator=gen, dtype=torch.float64)  # ... and of the entropies
    return x, w, b, t, a, c


def _run(fn, tensors, a, c):
    """(log_probs, entropy, gradients of sum(a lp + c H) w.r.t. tensors)."""
    lp, h = fn(*tensors)
    total = (lp * a.to(lp.dtype)).sum() + (h * c.to(h.dtype)).sum()
    grads = torch.autograd.grad(total, [t for t in tensors if t is not None and t.requires_grad])
    return [lp.detach(), h.detach(), *grads]


def _leaves(dtype, *ts):
    return [t.detach().to(dtype).requires_grad_() if t is not None else None for t in ts]


def check_linear(lead, v, d, *, temperature, softcap, bias, ignored, chunk_size=None):
    seed = zlib.crc32(repr((lead, v, d, temperature, softcap, bias, ignored)).encode())
    x, w, b, t, a, c = problem(lead, v, d, bias=bias, ignored=ignored, seed=seed)
    kw = dict(temperature=temperature, softcap=softcap)

    def ours(x, w, b):
        return crossent.linear_log_probs(x, w, t, linear_bias=b, return_entropy=True, chunk_size=chunk_size, **kw)

    def torchs(x, w, b):
        return composition(F.linear(x, w, b), t, **kw)

    got = _run(ours, _leaves(torch.float32, x, w, b), a, c)
    with crossent.use_backend("reference"):  # (no crossent call inside: the oracle is torch's)
        truth = _run(torchs, _leaves(torch.float64, x, w, b), a, c)
        theirs = _run(torchs, _leaves(torch.float32, x, w, b), a, c)
    assert got[0].dtype == torch.float32 and got[0].shape == lead
    compare(got, theirs, truth)


def check_logits(shape, *, temperature, softcap, ignored, sliced=False):
    seed = zlib.crc32(repr((shape, temperature, softcap, ignored, sliced)).encode())
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    logits.view(-1)[torch.randperm(logits.numel(), generator=gen)[:7]] = float("-inf")  # masked tokens
    t = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    if ignored:
        t[torch.rand(shape[:-1], generator=gen) < ignored] = -100
    lead = shape[:-1]
    if sliced:  # a (B, T-1, V) view of (B, T, V) logits, as TRL's logits[:, :-1]
        lead = (shape[0], shape[1] - 1)
    a = torch.randn(lead, generator=gen, dtype=torch.float64)
    c = torch.randn(lead, generator=gen, dtype=torch.float64)
    tt = t[:, 1:] if sliced else t
    cut = (lambda z: z[:, :-1]) if sliced else (lambda z: z)
    kw = dict(temperature=temperature, softcap=softcap)
    got = _run(lambda z: crossent.log_probs(cut(z), tt, return_entropy=True, **kw), _leaves(torch.float32, logits), a, c)
    with crossent.use_backend("reference"):
        truth = _run(lambda z: composition(cut(z), tt, **kw), _leaves(torch.float64, logits), a, c)
        theirs = _run(lambda z: composition(cut(z), tt, **kw), _leaves(torch.float32, logits), a, c)
    compare(got, theirs, truth)


GRID = list(itertools.product([1.0, 0.7], [None, 5.0], [0.0, 0.3]))  # temperature, softcap, ignored
IDS = [f"T{tp}-cap{cap}-ign{ig}" for tp, cap, ig in GRID]


@pytest.mark.parametrize("temperature,softcap,ignored", GRID, ids=IDS)
@pytest.mark.parametrize("lead", [(7,), (2, 5)], ids=["N", "BxT"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_linear_small(on_backend, lead, bias, temperature, softcap, ignored):
    check_linear(lead, 37, 8, temperature=temperature, softcap=softcap, bias=bias, ignored=ignored)


# At the fused size: the forced fused backend over a third of the grid, and auto (which then runs
# the same fused kernels, not torch's composition) on a cover of it: each option combination and
# each shape once (all of them under CROSSENT_FULL_GRID=1); every other backend runs its own kernels
# at any size, so the small grid covers it (the Triton interpreter, too slow for 1M logits, also
# runs multi-block rows and multi-chunk loops in tests/backends/triton/test_triton_log_probs.py).
FUSED_GRID = [(1.0, None, 0.0), (0.7, 5.0, 0.3), (1.0, 5.0, 0.3)]


def fused_size_cases(shapes):
    """pytest params (backend, shape, temperature, softcap, ignored) over `shapes` ({id: shape})."""
    every = [(b, s, *o) for b in ("auto", "fused") for s in shapes for o in FUSED_GRID]
    auto = [("auto", list(shapes)[k % len(shapes)], *o) for k, o in enumerate(FUSED_GRID)]
    cases = sampled(every, [c for c in every if c[0] == "fused"] + auto)
    return [pytest.param(b, shapes[s], *o, id=f"{s}-T{o[0]}-cap{o[1]}-ign{o[2]}-{b}") for b, s, *o in cases]


def _forced(backend):
    return crossent.use_backend(backend) if backend != "auto" else contextlib.nullcontext()


@pytest.mark.parametrize("backend, lead, temperature, softcap, ignored", fused_size_cases({"N": (41,), "BxT": (3, 14)}))
def test_linear_fused_size(backend, lead, temperature, softcap, ignored):
    """N V > 1M logits: over the composition's crossover, so auto runs the fused kernels; a
    chunk of 16 tokens makes the loop run 3 chunks (the last one short)."""
    with _forced(backend):
        check_linear(lead, 25000, 8, temperature=temperature, softcap=softcap, bias=True, ignored=ignored,
                     chunk_size=16)


@pytest.mark.parametrize("temperature,softcap,ignored", GRID, ids=IDS)
@pytest.mark.parametrize("shape", [(6, 29), (2, 4, 29)], ids=["NxC", "BxTxC"])
def test_logits_small(on_backend, shape, temperature, softcap, ignored):
    check_logits(shape, temperature=temperature, softcap=softcap, ignored=ignored)


@pytest.mark.parametrize("backend, sliced, temperature, softcap, ignored",
                         fused_size_cases({"contiguous": False, "sliced": True}))
def test_logits_fused_size(backend, temperature, softcap, ignored, sliced):
    """810K logits (over the crossover); ``sliced``: a (B, T-1, V) view read without a copy."""
    with _forced(backend):
        check_logits((2, 10 if sliced else 9, 45000), temperature=temperature, softcap=softcap,
                     ignored=ignored, sliced=sliced)
