"""Peak memory of the fused cross-entropy's forward+backward, in a fresh process per case: the
gradient and nothing else N x C beyond the logits (the autograd contract costs nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_MEASURE = textwrap.dedent("""
    import json, sys, torch, torch.nn.functional as F, crossent
    n, c, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    x = torch.randn(n, c, requires_grad=True)
    t = torch.randint(0, c, (n,))
    loss_fn = crossent.cross_entropy if case == "fused" else F.cross_entropy
    def step():
        (g,) = torch.autograd.grad(loss_fn(x, t, label_smoothing=0.1), x)
        del g
    def kb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = kb("VmRSS")
    step()
    print(json.dumps({"extra_bytes": (kb("VmHWM") - before) * 1024}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_forward_backward_peak_is_the_gradient():
    """N=2048, C=16384: logits 128 MiB. The fused path adds the gradient (128 MiB) plus chunk-sized
    buffers; torch's adds about twice more (its log-softmax and the gradient)."""
    n, c = 2048, 16384
    logits = n * c * 4
    procs = {case: subprocess.Popen([sys.executable, "-c", _MEASURE, str(n), str(c), case],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in ("fused", "torch")}
    extra = {}
    for case, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        extra[case] = json.loads(out.strip().splitlines()[-1])["extra_bytes"]
    assert extra["fused"] < 1.2 * logits, f"fused: {extra['fused'] / 2**20:.0f} MiB"
    assert extra["torch"] > 1.8 * logits, f"torch: {extra['torch'] / 2**20:.0f} MiB: the test measures nothing"
