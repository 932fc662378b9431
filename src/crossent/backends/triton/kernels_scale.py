"""The backward of a fused loss, when it has anything to do: g *= f in place (imported only when
Triton is; `ops.scale_grad_` launches it).

The fused losses finish their gradients in forward, with 'mean''s 1/den folded in, so the usual
``loss.backward()`` (grad_output = 1) needs nothing more -- but grad_output lives on the device,
and reading it on the host would be a sync (and impossible under CUDA-graph capture). So the
multiply is always launched, as a small persistent grid (about 4 programs per SM) whose programs
read f on the device and return at once when it is 1: a few microseconds instead of a read and a
write of the whole gradient. Otherwise each program scales whole blocks with 16-byte accesses
(unmasked), and program 0 the last partial block.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def scale_kernel(g_ptr, f_ptr, numel, BLOCK: tl.constexpr, ACC_F64: tl.constexpr):
    """g (numel,) contiguous *= f[0] (float32, or float64 for a float64 gradient), computed in
    f's dtype and rounded once into g's; nothing when f[0] == 1 (x * 1 == x for every x)."""
    f = tl.load(f_ptr)
    if f != 1.0:
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        for b in range(pid, numel // BLOCK, tl.num_programs(0)):
            offs = b * BLOCK + cols
            g = tl.load(g_ptr + offs, eviction_policy="evict_first")
            if ACC_F64:
                g = g.to(tl.float64)
            else:
                g = g.to(tl.float32)
            tl.store(g_ptr + offs, g * f, eviction_policy="evict_first")
        if pid == 0:
            offs = (numel // BLOCK) * BLOCK + cols
            mask = offs < numel
            g = tl.load(g_ptr + offs, mask=mask, other=0.0)
            if ACC_F64:
                g = g.to(tl.float64)
            else:
                g = g.to(tl.float32)
            tl.store(g_ptr + offs, g * f, mask=mask)
