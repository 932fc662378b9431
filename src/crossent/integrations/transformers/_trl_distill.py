"""TRL's ``DistillationTrainer`` (TRL >= 1.16): its divergence loss computed by
``crossent.linear_distillation_loss``.

The trainer does not use the models' losses nor TRL's fused LM head: its ``_compute_loss`` runs both
backbones for their last hidden states and hands them, with both ``lm_head`` weights and biases, to
the module function ``trl.trainer.distillation_trainer._chunked_divergence_loss`` (TRL's chunked
generalized JSD), which returns ``(loss, entropy_sum, n_valid)``. That function is the one seam,
made per trainer (`Router`): the first ``patch`` replaces the module's name, once and for good, by a
router that calls `divergence_loss` when the current context (a ContextVar) says so and TRL's
original otherwise; ``patch(trainer)`` wraps that trainer's ``_compute_loss`` (an instance attribute;
``unpatch`` deletes it) so that the ContextVar says so for the duration of its calls. A ContextVar is
per thread (and per asyncio task): an unpatched DistillationTrainer running at the same moment in
another thread keeps TRL's own loss (swapping the module attribute for the call's duration would have
handed it crossent's). What crossent computes:

* the logits as TRL makes them, z = softcap(logit_scale (h W^T + b)) / T for each model (TRL reads
  ``logit_scale`` & co. and ``final_logit_softcapping`` from each config): crossent's input and bias
  are logit_scale h and logit_scale b, its softcap and temperature TRL's; the products in float32
  (TRL's CPU tiles multiply float32 copies, its CUDA tiles 16-bit operands into float32), autocast
  off;
* the loss: TRL's generalized JSD (beta: 0 forward KL, 1 reverse KL, else the beta-mixture), the
  rows of ``completion_mask == 0`` counted in nothing, summed and divided by ``num_items_in_batch``
  (or the valid count, at least 1): reduction 'sum' of crossent's loss with those rows' targets
  ``ignore_index`` (hard_weight 0: the target only marks the rows);
* ``entropy_sum`` (TRL logs it; no gradient): the student's tempered entropy over the valid rows,
  by ``crossent.linear_log_probs(..., return_entropy=True)`` -- one more forward product of the
  student's head (2 N D V FLOPs) where TRL's chunks compute it beside the divergence.

Refused at patch time (``Unsupported``): a trainer without a local teacher, a subclass that
computes its loss another way (``ServerDistillationTrainer``: use
``crossent.linear_topk_distillation_loss``, see examples/topk_distillation.py), ``compute_loss_func``,
a TRL whose ``distillation_trainer`` module lacks the seam. TRL's ``GKDTrainer`` (an ``SFTTrainer``
subclass computing its loss from both models' full logits) is refused by ``_trl``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from typing import Any

import torch

from ..._checks import integrations as _checks
from ._common import IGNORE_INDEX

TRAINERS = ("DistillationTrainer",)
MIN_VERSION = (1, 16)
_MODULE = "trl.trainer.distillation_trainer"
_SEAM = "_chunked_divergence_loss"
_MARK = "_crossent_distillation"  # on the wrapper: which chunk_size it was patched with


def trainer_name(trainer: Any) -> str | None:
    """'DistillationTrainer' for TRL's trainer or a subclass of it, else None."""
    return next((c.__name__ for c in type(trainer).__mro__
                 if c.__name__ in TRAINERS and c.__module__.split(".")[0] == "trl"), None)


def _base(fn: str, version) -> Any:
    module = sys.modules.get(_MODULE)
    base = getattr(module, "DistillationTrainer", None)
    if base is None or not callable(getattr(module, _SEAM, None)) or not hasattr(base, "_compute_loss"):
        _checks.trl_unsupported(fn, version, MIN_VERSION, f"{_MODULE} has no {_SEAM}")
    return base


def check(fn: str, trainer: Any, version) -> None:
    """Refuses what crossent would not compute exactly (see the module docstring)."""
    if version is None or version[:2] < MIN_VERSION:
        _checks.trl_unsupported(fn, version, MIN_VERSION, "it has no DistillationTrainer")
    base = _base(fn, version)
    for method in ("compute_loss", "_compute_loss"):
        if getattr(type(trainer), method) is not getattr(base, method):
            _checks.trl_option_unsupported(
                fn, trainer, f"its own {method} (not DistillationTrainer's chunked divergence; for a served "
                "teacher's top-k use crossent.linear_topk_distillation_loss)")
    if getattr(trainer, "teacher_model", None) is None:
        _checks.trl_option_unsupported(fn, trainer, "no local teacher_model")
    if getattr(trainer, "compute_loss_func", None) is not None:
        _checks.trl_option_unsupported(fn, trainer, "compute_loss_func")
    if is_patched(trainer):
        _checks.trl_option_unsupported(fn, trainer, "crossent's patch already installed (unpatch it first)")


class Router:
    """The module function ``_chunked_divergence_loss`` once patched: ``seam``'s current value (set by a
    patched trainer's ``_compute_loss`` in this thread / task) if any, else ``original`` (TRL's)."""

    def __init__(self, original):
        self.original = original
        functools.update_wrapper(self, original)

    def __call__(self, *args, **kwargs):
        seam = _ACTIVE.get()
        return (seam if seam is not None else self.original)(*args, **kwargs)


# The crossent seam of the patched trainer whose _compute_loss runs in this context (None: TRL's).
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("crossent_distillation_seam", default=None)


def router(module) -> Router:
    """The module's Router, installed over the module's function if it is not there yet (also when
    something replaced it since: that replacement becomes the fallback)."""
    current = getattr(module, _SEAM)
    if not isinstance(current, Router):
        current = Router(current)
        setattr(module, _SEAM, current)
    return current


def patch(trainer: Any, chunk_size: int | None) -> None:
    original = trainer._compute_loss
    module = sys.modules[_MODULE]
    seam = functools.partial(divergence_loss, chunk_size=chunk_size)

    @functools.wraps(original)
    def compute_loss(*args, **kwargs):
        router(module)  # (again at each call: cheap, and robust to a module reloaded or re-patched)
        with _routed(seam):
            return original(*args, **kwargs)

    router(module)
    setattr(compute_loss, _MARK, True)
    trainer._compute_loss = compute_loss


def is_patched(trainer: Any) -> bool:
    return getattr(vars(trainer).get("_compute_loss"), _MARK, False)


def unpatch(fn: str, trainer: Any) -> None:
    if not is_patched(trainer):
        _checks.trl_option_unsupported(fn, trainer, "no crossent patch to remove")
    del trainer._compute_loss


@contextlib.contextmanager
def _routed(seam):
    """The module's router calls ``seam`` inside, in this context only (reset after, also on an
    error; a nested call restores the outer seam)."""
    token = _ACTIVE.set(seam)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _full(t):
    """A DTensor (FSDP2's lm_head) gathered once, as TRL does; other tensors as they are."""
    dtensor = getattr(getattr(torch.distributed, "tensor", None), "DTensor", None)
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def _head(hidden, weight, bias, scale):
    """(x, W, b) in float32 with TRL's logit_scale folded in: scale (h W^T + b) = (scale h) W^T + scale b."""
    x = hidden.reshape(-1, hidden.shape[-1]).float()
    b = None if bias is None else _full(bias).float()
    if scale != 1.0:
        x = x * scale
        b = None if b is None else b * scale
    return x, _full(weight).float(), b


def divergence_loss(student_hidden_states, teacher_hidden_states, student_lm_head_weight,
                    teacher_lm_head_weight, completion_mask, beta, num_items_in_batch=None,
                    student_lm_head_bias=None, teacher_lm_head_bias=None, student_logit_scale=1.0,
                    teacher_logit_scale=1.0, student_final_logit_softcapping=None,
                    teacher_final_logit_softcapping=None, temperature=1.0, *, chunk_size=None):
    """TRL 1.16's ``_chunked_divergence_loss`` (same arguments, same (loss, entropy_sum, n_valid)),
    by crossent's fused dense distillation."""
    import crossent.functional as F  # read at call time (tests count the calls)

    valid = completion_mask.reshape(-1) != 0
    n_valid = valid.sum()
    target = torch.where(valid, 0, IGNORE_INDEX).to(student_hidden_states.device)
    xs, ws, bs = _head(student_hidden_states, student_lm_head_weight, student_lm_head_bias, student_logit_scale)
    with torch.no_grad():
        xt, wt, bt = _head(teacher_hidden_states, teacher_lm_head_weight, teacher_lm_head_bias, teacher_logit_scale)
    with torch.autocast(xs.device.type, enabled=False):
        total = F.linear_distillation_loss(
            xs, ws, xt, wt, linear_bias=bs, teacher_linear_bias=bt, target=target, beta=beta,
            temperature=temperature, softcap=student_final_logit_softcapping,
            teacher_softcap=teacher_final_logit_softcapping, reduction="sum", chunk_size=chunk_size)
        with torch.no_grad():
            _, entropy = F.linear_log_probs(xs, ws, target, linear_bias=bs, temperature=temperature,
                                            softcap=student_final_logit_softcapping, return_entropy=True,
                                            chunk_size=chunk_size)
    if num_items_in_batch is None:
        loss = total / n_valid.clamp(min=1)  # as TRL: a fully masked batch gives 0, not 0 / 0
    else:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        loss = total / num_items_in_batch
    return loss, torch.where(valid, entropy, 0.0).sum(), n_valid
