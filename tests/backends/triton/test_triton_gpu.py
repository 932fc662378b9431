"""The Triton backend on a real GPU (skipped without one): parity with torch at realistic shapes,
bitwise determinism, no host sync, CUDA-graph capture, the dispatch rule on CUDA tensors, and
torch.compile. Run on a lent GPU by benchmarks/run_gpu.sh."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_no_worse_than_torch, skip_without_triton

skip_without_triton()
pytestmark = pytest.mark.gpu

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def _logits(gpu, n, v, dtype, seed=0):
    gen = torch.Generator(device=gpu).manual_seed(seed)
    return (torch.randn(n, v, device=gpu, generator=gen) * 3).to(dtype), torch.randint(0, v, (n,), device=gpu, generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v", [1000, 32000, 128256])  # one block; two-pass loop; Llama-3's vocabulary
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"reduction": "none"}, {"ignore_index": 3}],
                         ids=["plain", "smoothing", "none", "ignore"])
def test_cross_entropy_no_worse_than_torch(gpu, dtype, v, kw):
    x, t = _logits(gpu, 512, v, dtype)
    t[::5] = kw.get("ignore_index", -100)
    xa, xt, xr = (x.clone().requires_grad_() for _ in range(3))
    with crossent.use_backend("triton"):
        ours = crossent.cross_entropy(xa, t, **kw)
    theirs = F.cross_entropy(xt, t, **kw)
    ref = F.cross_entropy(xr.double(), t, **kw)
    assert ours.dtype == theirs.dtype
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    go = torch.rand_like(ours) + 0.5
    g, gt, gr = (torch.autograd.grad(loss, inp, go.to(loss.dtype))[0]
                 for loss, inp in ((ours, xa), (theirs, xt), (ref, xr)))
    assert_no_worse_than_torch(g, gt, gr, dtype)


@pytest.mark.parametrize("kw", [{"z_loss": 1e-4}, {"softcap": 30.0}, {"weight": True, "label_smoothing": 0.2}],
                         ids=["z_loss", "softcap", "weight+smoothing"])
def test_options_torch_lacks_match_the_reference(gpu, kw):
    x, t = _logits(gpu, 256, 50000, torch.float32)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(50000, device=gpu) + 0.1
    xa, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    # forced: 12.8M logits are below TRITON_MIN_NUMEL, and torch has class weights and smoothing,
    # so the dispatch would send that case to torch's kernel
    with crossent.use_backend("triton"):
        ours = crossent.cross_entropy(xa, t, **kw)
    ref = crossent.reference.cross_entropy(xr, t, **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    torch.testing.assert_close(ours.double(), ref, **TOL[torch.float32])
    torch.testing.assert_close(torch.autograd.grad(ours, xa)[0].double(), torch.autograd.grad(ref, xr)[0], **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_cross_entropy_no_worse_than_the_composition(gpu, dtype):
    gen = torch.Generator(device=gpu).manual_seed(1)
    x = (torch.randn(2048, 1024, device=gpu, generator=gen) * 0.5).to(dtype)
    w = (torch.randn(32000, 1024, device=gpu, generator=gen) / 32).to(dtype)
    t = torch.randint(0, 32000, (2048,), device=gpu, generator=gen)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ours = crossent.linear_cross_entropy(xa, wa, t)
    theirs = F.cross_entropy(xt @ wt.t(), t)
    ref = F.cross_entropy(xr @ wr.t(), t)
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    for a, b, c in zip(torch.autograd.grad(ours, (xa, wa)), torch.autograd.grad(theirs, (xt, wt)),
                       torch.autograd.grad(ref, (xr, wr))):
        assert a.dtype == dtype
        assert_no_worse_than_torch(a, b, c, dtype)


def test_binary_losses_match_torch(gpu):
    x = torch.randn(4096, 1000, device=gpu) * 4
    y = torch.rand_like(x)
    pw = torch.rand(1000, device=gpu) * 3
    xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        ours = crossent.binary_cross_entropy_with_logits(xa, y, pos_weight=pw)
    theirs = F.binary_cross_entropy_with_logits(xt, y, pos_weight=pw)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float32])
    torch.testing.assert_close(torch.autograd.grad(ours, xa)[0], torch.autograd.grad(theirs, xt)[0], **TOL[torch.float32])


def test_deterministic_bitwise(gpu):
    x, t = _logits(gpu, 1024, 128256, torch.bfloat16)
    h = torch.randn(1024, 512, device=gpu, dtype=torch.bfloat16)
    w = torch.randn(32000, 512, device=gpu, dtype=torch.bfloat16) / 20
    runs = []
    for _ in range(2):
        xa, ha, wa = x.clone().requires_grad_(), h.clone().requires_grad_(), w.clone().requires_grad_()
        with crossent.use_backend("triton"):
            a = crossent.cross_entropy(xa, t, label_smoothing=0.1)
            b = crossent.linear_cross_entropy(ha, wa, t % 32000)
        (a + b).backward()
        runs.append((a, b, xa.grad, ha.grad, wa.grad))
    for u, v in zip(*runs):
        assert torch.equal(u, v)


def test_no_host_sync(gpu):
    x, t = _logits(gpu, 1024, 32000, torch.bfloat16)
    h = torch.randn(1024, 512, device=gpu, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(32000, 512, device=gpu, dtype=torch.bfloat16) / 20).requires_grad_()
    xa = x.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with crossent.use_backend("triton"):
            loss = crossent.cross_entropy(xa, t, z_loss=1e-4) + crossent.linear_cross_entropy(h, w, t)
            loss = loss + crossent.binary_cross_entropy_with_logits(x.float()[:64], torch.rand(64, 32000, device=gpu))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_capture_of_the_loss(gpu):
    x, t = _logits(gpu, 256, 32000, torch.float32)
    with crossent.use_backend("triton"):
        want = crossent.cross_entropy(x, t, label_smoothing=0.1)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            crossent.cross_entropy(x, t, label_smoothing=0.1)  # warm-up (Triton compiles here)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = crossent.cross_entropy(x, t, label_smoothing=0.1)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)


def test_dispatch_on_cuda(gpu):
    """Small inputs take torch's kernel, large ones and options torch lacks take Triton."""
    from crossent import _dispatch
    from crossent._options import LossOptions

    triton_ce = _dispatch.backend(crossent.Backend.TRITON).cross_entropy
    small, t = _logits(gpu, 64, 10, torch.float32)
    big, tb = _logits(gpu, 8192, 4096, torch.bfloat16)
    assert _dispatch.cross_entropy(small.requires_grad_(), t, None, LossOptions()) is not triton_ce
    assert _dispatch.cross_entropy(big.requires_grad_(), tb, None, LossOptions()) is triton_ce
    assert _dispatch.cross_entropy(small, t, None, LossOptions(z_loss=1e-4)) is triton_ce


def test_torch_compile_fullgraph(gpu):
    x, t = _logits(gpu, 1024, 32000, torch.bfloat16)  # 32.8M logits: above TRITON_MIN_NUMEL
    f = torch.compile(lambda x, t: crossent.cross_entropy(x, t, z_loss=1e-4), fullgraph=True)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = f(xa, t)
    want = crossent.cross_entropy(xr, t, z_loss=1e-4)
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])
    got.backward()
    want.backward()
    torch.testing.assert_close(xa.grad, xr.grad, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unaligned_vocabulary_50257(gpu, dtype):
    """GPT-2's vocabulary: rows not 16-byte aligned (the kernel's aligned body and edges), the
    loop kernel, a grad_output other than 1 (backward's scale kernel)."""
    x, t = _logits(gpu, 512, 50257, dtype)
    xa, xt, xr = (x.clone().requires_grad_() for _ in range(3))
    kw = {"label_smoothing": 0.1}
    with crossent.use_backend("triton"):
        ours = crossent.cross_entropy(xa, t, **kw)
    theirs = F.cross_entropy(xt, t, **kw)
    ref = F.cross_entropy(xr.double(), t, **kw)
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    go = torch.tensor(1.7, device=gpu)
    g, gt, gr = (torch.autograd.grad(loss, inp, go.to(loss.dtype))[0]
                 for loss, inp in ((ours, xa), (theirs, xt), (ref, xr)))
    assert_no_worse_than_torch(g, gt, gr, dtype)


def test_linear_cross_entropy_compiled_equals_eager(gpu):
    gen = torch.Generator(device=gpu).manual_seed(2)
    x = (torch.randn(2048, 1024, device=gpu, generator=gen) * 0.5).to(torch.bfloat16)
    w = (torch.randn(32000, 1024, device=gpu, generator=gen) / 32).to(torch.bfloat16)
    t = torch.randint(0, 32000, (2048,), device=gpu, generator=gen)
    f = torch.compile(lambda x, w, t: crossent.linear_cross_entropy(x, w, t, z_loss=1e-4), fullgraph=True)
    xa, wa, xe, we = (v.clone().requires_grad_() for v in (x, w, x, w))
    got = f(xa, wa, t)
    want = crossent.linear_cross_entropy(xe, we, t, z_loss=1e-4)
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])
    got.backward()
    want.backward()
    torch.testing.assert_close(xa.grad, xe.grad, **TOL[torch.bfloat16])
    torch.testing.assert_close(wa.grad, we.grad, **TOL[torch.bfloat16])


def test_float32_accumulating_product_is_exact_in_place(gpu):
    """linear_chunks.float32_products only asks whether addmm(..., out_dtype=float32, out=c) runs;
    here its values: c += a @ b in place, against float64 (torch issue 154086 reported out= with
    out_dtype broken in a 2025 build)."""
    from crossent.backends.loops import linear_chunks

    if not linear_chunks.float32_products(torch.device(gpu), torch.bfloat16):
        pytest.skip("this torch has no float32-accumulating addmm on CUDA: the slice path runs")
    gen = torch.Generator(device=gpu).manual_seed(3)
    a = torch.randn(300, 130, device=gpu, generator=gen).bfloat16()
    b = torch.randn(130, 70, device=gpu, generator=gen).bfloat16()
    c = torch.randn(300, 70, device=gpu, generator=gen)
    want = c.double() + a.double() @ b.double()
    linear_chunks.weight_grad_product(c, a, b, first=False)
    torch.testing.assert_close(c.double(), want, atol=1e-4, rtol=1e-5)
    linear_chunks.weight_grad_product(c, a, b, first=True)
    torch.testing.assert_close(c.double(), a.double() @ b.double(), atol=1e-4, rtol=1e-5)


def test_linear_weight_gradient_peak_is_the_accumulator(gpu):
    """bfloat16 head V=65536, D=2048: the float32 grad_W (512 MiB) is finished into its own
    storage, so the step's peak is forward's (accumulator + one chunk + grad_x), not the
    accumulator plus a 256 MiB 16-bit copy at the end of backward (loops/weight_grad.py)."""
    from crossent._options import LossOptions
    from crossent.backends import triton
    from crossent.backends.loops import weight_grad

    n, d, v = 2048, 2048, 65536
    gen = torch.Generator(device=gpu).manual_seed(4)
    x = (torch.randn(n, d, device=gpu, generator=gen) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(v, d, device=gpu, generator=gen) / 45).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device=gpu, generator=gen)
    with crossent.use_backend("triton"):
        crossent.linear_cross_entropy(x, w, t).backward()  # warm-up (Triton compiles here)
    x.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with crossent.use_backend("triton"):
        crossent.linear_cross_entropy(x, w, t).backward()
    peak = torch.cuda.max_memory_allocated() - base
    rows = triton.chunk_rows(n, d, v, torch.bfloat16, LossOptions())
    expected = weight_grad.memory(v, d)["finishing"] + rows * v * 2 + n * d * 2
    assert w.grad.dtype == torch.bfloat16
    # (a .to() copy at the end of backward would add v d 2 bytes = 256 MiB)
    assert peak < expected + (48 << 20), (peak / 2**20, expected / 2**20)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_log_probs_and_entropy_match_the_reference(gpu, dtype):
    """The log-probs / entropy kernels (issue 22) on the GPU: GPT-2's unaligned vocabulary, a
    temperature and softcap, values and the logits' gradient against the float64 reference."""
    x, t = _logits(gpu, 512, 50257, dtype, seed=5)
    out = {}
    for backend, z in (("triton", x), ("reference", x.double())):
        za = z.clone().requires_grad_()
        with crossent.use_backend(backend):
            lp, h = crossent.log_probs(za, t, return_entropy=True, temperature=0.8, softcap=30.0)
        g, = torch.autograd.grad((lp * 1.5 - 0.7 * h).sum(), za)
        out[backend] = (lp, h, g)
    tol = TOL[dtype] if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for a, b in zip(out["triton"], out["reference"]):
        torch.testing.assert_close(a.double(), b.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_distillation_kernels_no_worse_than_torch(gpu, dtype):
    """The distillation kernels (issue 23) on the GPU: dense JSD with temperature and a hard
    term, and top-k, each no worse than the torch composition against the float64 reference."""
    from distill_helpers import check_dense, check_topk, dense_problem, topk_problem

    dense = tuple(a.to(gpu) if a is not None else None for a in dense_problem(512, 256, 384, 32000, seed=7))
    topk = tuple(a.to(gpu) for a in topk_problem(512, 256, 32000, 8, seed=8))
    with crossent.use_backend("triton"):
        check_dense(dense, dtype, beta=0.5, temperature=2.0, hard_weight=0.3)
        check_topk(topk, dtype, temperature=2.0)
