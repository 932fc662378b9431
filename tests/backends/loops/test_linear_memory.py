"""Peak memory of the fused linear cross-entropy, measured in a fresh process per case."""

from __future__ import annotations

import sys

import pytest
from memory_probe import peak_extra_bytes

_STEP = """
    import sys, torch, torch.nn.functional as F, crossent
    torch.manual_seed(0)
    n, d, v, case = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    t = torch.randint(0, v, (n,))
    fn = crossent.linear_cross_entropy if case == "fused" else (
        lambda h, w, t: crossent.cross_entropy(F.linear(h, w), t))
    if case == "compiled":  # the custom op of backends/loops/linear_op.py
        fn = torch.compile(crossent.linear_cross_entropy, fullgraph=True, backend="aot_eager")
    def step():
        torch.autograd.grad(fn(h, w, t), (h, w))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_below_a_bound_the_unfused_composition_exceeds():
    """N=2048, D=64, V=16384: the logits are 128 MiB. Fused: the gradients (4 MiB + 0.5 MiB) plus
    one 16 MiB chunk, so below 1/4 of the logits, also under torch.compile (one custom op); the
    unfused composition needs the logits and their gradient, so above the logits' size."""
    n, d, v = 2048, 64, 16384
    logits = n * v * 4
    peaks = peak_extra_bytes(_STEP, ["fused", "unfused", "compiled"], n, d, v)
    fused, unfused_ = peaks["fused"], peaks["unfused"]
    bound = logits // 4
    assert fused < bound, f"fused peak {fused / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"
    assert peaks["compiled"] < bound, f"compiled peak {peaks['compiled'] / 2**20:.0f} MiB >= bound"
    assert unfused_ > bound * 4, f"unfused peak {unfused_ / 2**20:.0f} MiB: the test measures nothing"


