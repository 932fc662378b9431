"""Peak memory of the fused distillation losses, measured in a fresh process per case: never an
(N, V) tensor of either model beyond one chunk."""

from __future__ import annotations

import sys

import pytest
from memory_probe import peak_extra_bytes

_STEP = """
    import sys, torch, torch.nn.functional as F, crossent
    torch.manual_seed(0)
    case = sys.argv[6]
    n, d, d_t, v, k = (int(a) for a in sys.argv[1:6])
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d**0.5).requires_grad_()
    h_t, w_t = torch.randn(n, d_t), torch.randn(v, d_t) / d_t**0.5
    t = torch.randint(0, v, (n,))
    ids = torch.stack([torch.randperm(v)[:k] for _ in range(4)]).repeat(n // 4, 1)
    log_q = torch.full((n, k), -3.0 - k / 8)
    def composition():
        z = F.linear(h, w)
        with torch.no_grad():
            log_q_ = F.log_softmax(F.linear(h_t, w_t) / 2.0, -1)
        log_p = F.log_softmax(z / 2.0, -1)
        kl = F.kl_div(log_p, log_q_, reduction="none", log_target=True).sum(-1)
        return kl.mean() + 0.5 * F.cross_entropy(z, t)
    fn = {
        "dense": lambda: crossent.linear_distillation_loss(h, w, h_t, w_t, target=t, beta=0.5, temperature=2.0,
                                                           hard_weight=0.5),
        "dense fwdKL": lambda: crossent.linear_distillation_loss(h, w, h_t, w_t, beta=0.0, temperature=2.0,
                                                                 reduction="none").sum(),
        "topk": lambda: crossent.linear_topk_distillation_loss(h, w, ids, log_q, temperature=2.0),
        "composition": composition,
    }[case]
    def step():
        torch.autograd.grad(fn(), (h, w))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_below_a_bound_the_composition_exceeds():
    """N=2048, D=64, D_t=96, V=16384, k=64: each model's logits are 128 MiB. Fused: the
    gradients (0.5 MiB + 4 MiB) plus one chunk of each model's logits and their temporaries,
    below 1/4 of one model's logits; the composition holds both models' logits, the log-probs and
    a gradient, above twice one model's logits."""
    n, d, d_t, v, k = 2048, 64, 96, 16384, 64
    logits = n * v * 4
    peaks = peak_extra_bytes(_STEP, ["dense", "dense fwdKL", "topk", "composition"], n, d, d_t, v, k)
    bound = logits // 4
    for case in ("dense", "dense fwdKL", "topk"):
        assert peaks[case] < bound, f"{case}: peak {peaks[case] / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"
    assert peaks["composition"] > 2 * logits, f"composition {peaks['composition'] / 2**20:.0f} MiB: measures nothing"
