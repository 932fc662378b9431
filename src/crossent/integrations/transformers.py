"""Hugging Face transformers: crossent's loss for causal language models, through public seams only.

Two ways in (extra ``crossent[hf]``, transformers>=4.46):

* ``causal_lm_loss`` -- a drop-in for transformers' ``ForCausalLMLoss``, set with the public hook
  ``model.loss_function = causal_lm_loss``; ``compute_loss_func`` is the same loss with the
  signature of ``Trainer(compute_loss_func=...)``. The model still builds its logits; the loss
  reads them without the float32 copy transformers makes of them.
* ``patch(model)`` / ``unpatch(model)`` -- in training, with labels, the logits are never built:
  the decoder's last hidden states and the output embedding's weight and bias go straight into
  ``crossent.linear_cross_entropy``. One generic code path for every ``*ForCausalLM`` model; no
  model's forward is copied.

How ``patch`` works (and why it keeps distributed parameter gathering working)
------------------------------------------------------------------------------
The patched forward calls the model's own, unchanged forward with ``labels=None``, while the output
head (``model.get_output_embeddings()``, a direct child such as ``lm_head``) is swapped, for the
duration of that call only, for a parameter-free module that records the hidden states it is given
-- after the model's own ``logits_to_keep`` slicing -- and returns a tiny probe tensor. Whatever
the model does to its logits afterwards (Gemma 2's softcap, Cohere's scale) is applied to the
probe, and the result is checked against what the config says (``final_logit_softcapping``,
``logit_scale``, ``logits_scaling``): an unknown post-processing raises instead of being silently
dropped.

The loss is then computed *inside a call of the real head module*: ``model.lm_head(hidden)`` is
called with the head's ``forward`` temporarily replaced by the fused loss, which reads
``head.weight`` and ``head.bias`` at that moment. So every hook on the head runs around the fused
loss exactly as it runs around the ordinary ``F.linear``: FSDP's and DeepSpeed ZeRO-3's pre-forward
hooks gather the sharded weight before it is read, their post-forward hooks release it, and the
backward hooks they attach to the module's output attach to the loss, so the weight is gathered
again before the loss's backward reads it. (Reading ``model.lm_head.weight`` from outside the
module's call, as some integrations do, reads the empty shard under ZeRO-3.) The head is called
once per step, as without crossent. Because ``patch`` stores only the child's name, wrapping the
head after patching (FSDP1 auto-wrap) is fine too: the wrapper is what gets called.

Training only: in eval mode, or without labels, the original forward runs untouched (logits and
loss as transformers computes them), so evaluation metrics that need logits keep working.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as _functional

try:
    import transformers
    from transformers.modeling_outputs import ModelOutput
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "crossent.integrations.transformers needs transformers>=4.46: "
        "pip install 'crossent[hf]'"
    ) from exc

__all__ = ["causal_lm_loss", "compute_loss_func", "is_patched", "patch", "unpatch"]

IGNORE_INDEX = -100  # transformers' default in ForCausalLMLoss
_STATE = "_crossent_patch"  # instance attribute holding what unpatch needs


# ---------------------------------------------------------------- the plain loss


def _shift_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # (B, T) -> (B, T): position t is trained to predict token t+1; the last predicts nothing.
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _loss_dtype(t: torch.Tensor) -> torch.dtype | None:
    # transformers returns a float32 loss for 16-bit logits (it computes on logits.float());
    # crossent's dtype=torch.float32 returns that loss unrounded, without the float32 copy.
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None


def _normalizer(fn: str, num_items_in_batch: Any, device: torch.device):
    if num_items_in_batch is None:
        return None
    if torch.is_tensor(num_items_in_batch):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"{fn}: num_items_in_batch must be a number or a one-element tensor, "
                f"got a tensor of shape {tuple(num_items_in_batch.shape)}"
            )
        return num_items_in_batch.to(device)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise ValueError(
            f"{fn}: num_items_in_batch must be a number or a one-element tensor, "
            f"got {num_items_in_batch!r}"
        )
    return num_items_in_batch


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss``, computed by ``crossent.cross_entropy``.

    Same signature as ``transformers.loss.loss_utils.ForCausalLMLoss`` (``vocab_size`` may be
    omitted: it is then ``logits.shape[-1]``), so ``model.loss_function = causal_lm_loss`` works
    for every causal LM (in transformers versions whose ``loss_function`` property has a setter;
    4.46 has none: use ``compute_loss_func`` or ``patch`` there). Equivalent to::

        shift_labels = pad(labels, (0, 1), value=ignore_index)[..., 1:]   # unless given
        loss = cross_entropy(logits.float().view(-1, V), shift_labels.view(-1),
                             ignore_index=ignore_index,
                             reduction="mean" if num_items_in_batch is None else "sum")
        if num_items_in_batch is not None: loss = loss / num_items_in_batch

    but without ``logits.float()``: 16-bit logits are read in place (crossent computes them in
    float32 chunk by chunk, ``dtype=torch.float32``), and the loss is returned in float32, not
    rounded to 16 bits, as transformers returns it.
    Other keyword arguments (the model's forward passes its own through) are ignored, as
    transformers ignores them.
    """
    fn = "causal_lm_loss"
    if not torch.is_tensor(logits):
        raise TypeError(f"{fn}: logits must be a tensor, got {type(logits).__name__}")
    vocab = logits.shape[-1] if logits.dim() else 0
    if vocab_size is not None and vocab_size != vocab:
        raise ValueError(
            f"{fn}: vocab_size={vocab_size} does not match the logits' last dimension "
            f"{vocab} (logits of shape {tuple(logits.shape)})"
        )
    if shift_labels is None:
        if labels is None:
            raise ValueError(f"{fn}: labels and shift_labels are both None; give one")
        shift_labels = _shift_labels(labels, ignore_index)
    target = shift_labels.reshape(-1).to(logits.device)  # (B*T,)
    flat = logits.reshape(-1, vocab)  # (B*T, V): a view for contiguous logits
    if flat.shape[0] != target.shape[0]:
        raise ValueError(
            f"{fn}: logits of shape {tuple(logits.shape)} and labels of shape "
            f"{tuple(shift_labels.shape)} hold different numbers of tokens"
        )
    norm = _normalizer(fn, num_items_in_batch, logits.device)
    dtype = _loss_dtype(logits)
    if norm is None:
        return _functional.cross_entropy(flat, target, ignore_index=ignore_index, dtype=dtype)
    loss = _functional.cross_entropy(
        flat, target, ignore_index=ignore_index, reduction="sum", dtype=dtype
    )
    return loss / norm


def compute_loss_func(
    outputs: Any, labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """``causal_lm_loss`` with the signature of ``Trainer(compute_loss_func=...)``.

    The Trainer takes ``labels`` out of the inputs before the forward (so the model returns logits
    and no loss) and calls this with the model's outputs.
    """
    logits = outputs["logits"] if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(
            "compute_loss_func: the model's outputs have no logits (got "
            f"{type(outputs).__name__}); a patched model returns none in training: use "
            "patch() or compute_loss_func, not both"
        )
    return causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)


# ---------------------------------------------------------------- patch / unpatch


@dataclasses.dataclass
class _PatchState:
    head_name: str  # the output head's attribute name on the model, e.g. "lm_head"
    head: nn.Linear  # the linear layer whose weight and bias the loss reads
    previous_forward: Any  # the instance's own `forward` attribute before patch, or None
    signature: inspect.Signature  # of the original forward, without self
    scale: float  # logits = scale * (h @ W.T + b) before the softcap
    softcap: float | None
    chunk_size: int | None


class _Capture(nn.Module):
    """Stands in for the head during the decoder's forward: records h, returns a probe."""

    # Two logits per position, distinct enough that a missed scale or softcap shows.
    PROBE = (0.75, -3.0)

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T', D) -> (B, T', 2)
        self.hidden = hidden
        probe = torch.tensor(self.PROBE, dtype=hidden.dtype, device=hidden.device)
        return probe.expand(*hidden.shape[:-1], len(self.PROBE))


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return False
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _config_number(fn: str, config: Any, name: str) -> float | None:
    value = getattr(config, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{fn}: config.{name} must be a positive finite number or None, got {value!r}"
        )
    return float(value)


def _logit_transform(fn: str, config: Any) -> tuple[float, float | None]:
    """(scale, softcap) from the config: logits = softcap * tanh(scale * (hW^T + b) / softcap)."""
    scale = 1.0
    logit_scale = _config_number(fn, config, "logit_scale")  # Cohere: logits * logit_scale
    if logit_scale is not None:
        scale *= logit_scale
    logits_scaling = _config_number(fn, config, "logits_scaling")  # Granite: logits / scaling
    if logits_scaling is not None:
        scale /= logits_scaling
    softcap = _config_number(fn, config, "final_logit_softcapping")  # Gemma 2 and 3
    return scale, softcap


def is_patched(model: nn.Module) -> bool:
    """Whether ``patch(model)`` is in effect."""
    return _STATE in vars(model)


def patch(model: nn.Module, *, chunk_size: int | None = None) -> nn.Module:
    """Make ``model``'s training forward compute its loss with ``crossent.linear_cross_entropy``.

    model: an instance of a transformers causal-LM class (``*ForCausalLM``, ``GPT2LMHeadModel``,
    ...) whose output embedding is a plain ``nn.Linear`` (tied input embeddings included) held as a
    direct child. Anything else raises here, at patch time: a head that is not a plain linear
    layer (a quantised or LoRA-wrapped ``lm_head``, say) would otherwise be silently bypassed.
    chunk_size: passed to ``linear_cross_entropy`` (tokens per chunk; default: its own choice).

    In training mode with ``labels`` the patched forward returns the model's own output class with
    ``loss`` set and ``logits=None``; the logits are never built. The loss is, to float rounding,
    the unpatched model's: labels shifted (or ``shift_labels`` used as given), -100 ignored, the
    mean over counted tokens or the sum divided by ``num_items_in_batch`` when given (Trainer's
    gradient accumulation), ``config.final_logit_softcapping`` applied as ``softcap``, a logit
    scale from ``config.logit_scale`` / ``config.logits_scaling``, and a mixture-of-experts
    model's ``aux_loss`` added with ``config.router_aux_loss_coef`` as transformers adds it.
    With ``logits_to_keep`` the loss covers the kept positions only (their shifted labels).
    ``model.loss_function`` is not used by the patched path.
    Returns ``model`` (patched in place); ``unpatch(model)`` restores it exactly.

    See the module docstring for how the head's hooks (FSDP, DeepSpeed ZeRO-3) keep firing.
    """
    fn = "patch"
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"{fn}: model must be a transformers PreTrainedModel, got {type(model).__name__}"
        )
    if not _is_causal_lm(model):
        raise ValueError(
            f"{fn}: model must be a causal language model (a *ForCausalLM class), got "
            f"{type(model).__name__}"
        )
    if is_patched(model):
        raise ValueError(f"{fn}: {type(model).__name__} is already patched")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise ValueError(
            f"{fn}: {type(model).__name__}'s output embedding must be a plain nn.Linear, got "
            f"{type(head).__name__}; crossent's fused loss would bypass its forward"
        )
    head_name = next((n for n, m in model.named_children() if m is head), None)
    if head_name is None:
        raise ValueError(
            f"{fn}: {type(model).__name__}'s output embedding is not a direct child of the model"
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{fn}: chunk_size must be a positive int or None, got {chunk_size!r}")
    scale, softcap = _logit_transform(fn, model.config)
    previous = vars(model).get("forward")
    original = model.forward
    signature = inspect.signature(original)
    if "labels" not in signature.parameters:
        raise ValueError(f"{fn}: {type(model).__name__}.forward takes no labels argument")

    state = _PatchState(head_name, head, previous, signature, scale, softcap, chunk_size)
    vars(model)[_STATE] = state

    def forward(self, *args, **kwargs):
        return _patched_forward(self, args, kwargs)

    # Trainer reads the forward's signature (which columns to keep, whether it takes
    # num_items_in_batch): show the original's.
    forward.__signature__ = inspect.signature(type(model).forward)
    forward.__doc__ = original.__doc__
    forward.__name__ = "forward"
    # A bound method, not a closure over model: copy.deepcopy(model) rebinds it to the copy.
    vars(model)["forward"] = types.MethodType(forward, model)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``patch(model)``: the model is left exactly as before (its own forward back)."""
    if not is_patched(model):
        raise ValueError(f"unpatch: {type(model).__name__} is not patched")
    state: _PatchState = vars(model).pop(_STATE)
    if state.previous_forward is None:
        del vars(model)["forward"]
    else:
        vars(model)["forward"] = state.previous_forward
    return model


def _original_forward(model: nn.Module, state: _PatchState):
    if state.previous_forward is None:
        return type(model).forward.__get__(model)
    return state.previous_forward


def _patched_forward(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    state: _PatchState = vars(model)[_STATE]
    original = _original_forward(model, state)
    bound = state.signature.bind(*args, **kwargs)
    labels = bound.arguments.get("labels")
    if not model.training or labels is None:
        return original(*args, **kwargs)

    # Loss-only keyword arguments (the model would pass them on to its loss_function).
    varkw = next(
        (p.name for p in state.signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )
    extra = bound.arguments.get(varkw, {}) if varkw else {}
    shift_labels = extra.pop("shift_labels", None)
    num_items_in_batch = extra.pop("num_items_in_batch", None)
    bound.arguments["labels"] = None

    # 1. The model's own forward, head swapped for a capture: hidden states, no logits.
    head_module = model._modules[state.head_name]  # the head, or a wrapper installed since patch
    capture = _Capture()
    model._modules[state.head_name] = capture
    try:
        out = original(*bound.args, **bound.kwargs)
    finally:
        model._modules[state.head_name] = head_module
    hidden = capture.hidden  # (B, T', D), after the model's logits_to_keep slicing
    if hidden is None:
        raise RuntimeError(
            f"crossent patch: {type(model).__name__}'s forward did not call its output "
            f"embedding {state.head_name!r}; unpatch the model"
        )
    is_output = isinstance(out, ModelOutput)
    logits = out.get("logits") if is_output else out[0]
    _check_probe(model, state, logits)

    # 2. Targets aligned with the kept positions.
    if shift_labels is None:
        shift_labels = _shift_labels(labels, IGNORE_INDEX)
    target = _kept_targets(model, bound, shift_labels.to(hidden.device), hidden)  # (B, T')
    norm = _normalizer("crossent patch", num_items_in_batch, hidden.device)

    # 3. The loss, inside a call of the head module so that its hooks fire around it.
    loss = _head_loss(head_module, state, hidden, target, norm)

    aux = out.get("aux_loss") if is_output else None
    if aux is not None:  # mixture of experts: transformers adds coef * aux_loss when labels given
        coef = getattr(model.config, "router_aux_loss_coef", None)
        if coef is None:
            raise RuntimeError(
                f"crossent patch: {type(model).__name__} returned aux_loss but its config has no "
                "router_aux_loss_coef; unpatch the model"
            )
        loss = loss + coef * aux.to(loss.device)

    if is_output:
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        return type(out)(loss=loss, **fields)
    return (loss, None, *out[1:])


def _check_probe(model: nn.Module, state: _PatchState, logits: Any) -> None:
    """The model's post-processing of its logits must be the (scale, softcap) patch applies."""
    probe = torch.tensor(_Capture.PROBE, dtype=torch.float64)
    expected = probe * state.scale
    if state.softcap is not None:
        expected = state.softcap * torch.tanh(expected / state.softcap)
    got = None
    if torch.is_tensor(logits) and logits.shape[-1:] == probe.shape and logits.numel():
        got = logits.reshape(-1, probe.numel())[0].detach().to("cpu", torch.float64)
    if got is None or not torch.allclose(got, expected, rtol=1e-2, atol=1e-2):
        raise RuntimeError(
            f"crossent patch: {type(model).__name__} transforms its logits in a way patch does "
            f"not know (probe {list(_Capture.PROBE)} came back as "
            f"{None if got is None else got.tolist()}, expected {expected.tolist()} from "
            f"scale={state.scale}, softcap={state.softcap}); unpatch the model"
        )


def _kept_targets(model, bound, shift_labels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    kept = hidden.shape[:-1]
    if shift_labels.shape == kept:
        return shift_labels
    # transformers >= 4.50 names it logits_to_keep, 4.46-4.49 num_logits_to_keep.
    keep = bound.arguments.get("logits_to_keep", bound.arguments.get("num_logits_to_keep"))
    if isinstance(keep, int) and keep > 0:
        sliced = shift_labels[..., -keep:]
    elif torch.is_tensor(keep):
        sliced = shift_labels[..., keep.to(shift_labels.device)]
    else:
        sliced = shift_labels
    if sliced.shape != kept:
        raise ValueError(
            f"crossent patch: labels of shape {tuple(shift_labels.shape)} (shifted) do not match "
            f"the {tuple(kept)} positions whose logits {type(model).__name__} computes"
        )
    return sliced


def _head_loss(head_module: nn.Module, state: _PatchState, hidden, target, norm) -> torch.Tensor:
    head = state.head
    scale, softcap, chunk_size = state.scale, state.softcap, state.chunk_size

    def fused(h: torch.Tensor) -> torch.Tensor:  # (B, T', D) -> ()
        weight, bias = head.weight, head.bias  # read now: after the gathering pre-hooks
        if scale != 1.0:  # scale * (h W^T + b) = (scale h) W^T + scale b
            h = h * scale
            bias = bias * scale if bias is not None else None
        return _functional.linear_cross_entropy(
            h.reshape(-1, h.shape[-1]), weight, target.reshape(-1), linear_bias=bias,
            ignore_index=IGNORE_INDEX, reduction="mean", softcap=softcap, normalizer=norm,
            chunk_size=chunk_size, dtype=_loss_dtype(h),
        )

    previous = vars(head).get("forward")
    vars(head)["forward"] = fused
    try:
        return head_module(hidden)
    finally:
        if previous is None:
            del vars(head)["forward"]
        else:
            vars(head)["forward"] = previous
