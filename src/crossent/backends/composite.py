"""Backend.COMPOSITE: crossent's formulas (reference.py) as a plain composition of differentiable
torch ops in the compute dtype (float32; float64 for float64 inputs).

Chosen where the fused kernels' precomputed gradients cannot serve: under torch.func transforms
(grad, vjp, jacrev, vmap see ordinary ops) and under torch.compile (Dynamo traces ordinary ops,
Inductor fuses them; no graph break). The fused kernels also use it to recompute a gradient with a
graph for second derivatives (`backends/autograd.py`). Exact like every backend; it builds N x C
temporaries (the memory of torch's own composition), and its sums are torch's (deterministic for a
fixed thread count, not across thread counts).
"""

from __future__ import annotations

from .common import compute_dtype
from .reference import formulas

_compute = formulas(compute_dtype)
cross_entropy = _compute.cross_entropy
nll_loss = _compute.nll_loss
binary_cross_entropy = _compute.binary_cross_entropy
binary_cross_entropy_with_logits = _compute.binary_cross_entropy_with_logits
linear_cross_entropy = _compute.linear_cross_entropy
