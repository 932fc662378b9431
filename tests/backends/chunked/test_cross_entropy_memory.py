"""Peak memory of the fused cross-entropy's forward+backward, in a fresh process per case: the
gradient and nothing else N x C beyond the logits (the autograd contract costs nothing here)."""

from __future__ import annotations

import sys

import pytest
from memory_probe import peak_extra_bytes

_STEP = """
    import sys, torch, torch.nn.functional as F, crossent
    n, c, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    x = torch.randn(n, c, requires_grad=True)
    t = torch.randint(0, c, (n,))
    loss_fn = crossent.cross_entropy if case == "fused" else F.cross_entropy
    def step():
        (g,) = torch.autograd.grad(loss_fn(x, t, label_smoothing=0.1), x)
        del g
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_forward_backward_peak_is_the_gradient():
    """N=2048, C=16384: logits 128 MiB. The fused path adds the gradient (128 MiB) plus chunk-sized
    buffers; torch's adds about twice more (its log-softmax and the gradient)."""
    n, c = 2048, 16384
    logits = n * c * 4
    extra = peak_extra_bytes(_STEP, ["fused", "torch"], n, c)
    assert extra["fused"] < 1.2 * logits, f"fused: {extra['fused'] / 2**20:.0f} MiB"
    assert extra["torch"] > 1.8 * logits, f"torch: {extra['torch'] / 2**20:.0f} MiB: the test measures nothing"
