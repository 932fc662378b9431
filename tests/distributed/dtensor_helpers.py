"""What the DTensor-head case files share: a DTensor (or a plain tensor) as a full tensor, and the
check of the input's, weight's and bias' gradients against the single-process reference."""

from __future__ import annotations

from cases import close
from torch.distributed.tensor import DTensor


def full(v):
    return v.full_tensor() if isinstance(v, DTensor) else v


def check_head_grads(xd, wd, bd, ref_grads, bias_rows, what: str) -> None:
    """xd/wd/bd's gradients equal ref_grads (x, W, b); the weight's is a DTensor; a plain bias
    gradient is this rank's rows (``bias_rows``) of the reference's."""
    assert isinstance(wd.grad, DTensor), type(wd.grad)
    for got, want, name in ((xd.grad, ref_grads[0], "x"), (wd.grad, ref_grads[1], "W"),
                            (None if bd is None else bd.grad, ref_grads[2], "b")):
        if want is not None:
            plain_rows = name == "b" and not isinstance(got, DTensor)
            close(full(got), want[bias_rows] if plain_rows else want, f"grad_{name} {what}")
