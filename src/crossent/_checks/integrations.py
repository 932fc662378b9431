"""Checks of the Hugging Face transformers integration (crossent.integrations.transformers).

Nothing here imports transformers (crossent itself does not need it): where a check needs one of
its classes, the integration passes it in. ``fn`` names the public function the user called;
errors found while a patched forward runs name ``"crossent patch"``.

The patch-time probe's refusals are in ``integrations_probe``.

Exception types, one per kind of mistake (as the rest of crossent): ``InvalidArgumentType`` (an
argument of the wrong type), ``InvalidArgument`` (a wrong value, shape or state: patched twice, not
patched), and ``Unsupported`` -- a model, head, trainer, option or library version whose loss
crossent cannot compute exactly, refused rather than computed differently. All three are also
``RuntimeError``s; the first two are a ``TypeError`` / ``ValueError``, ``Unsupported`` a
``ValueError``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NoReturn

import torch
from torch import nn

from ._common import InvalidArgument, InvalidArgumentType, count

PATCHED = "crossent patch"  # the `fn` of errors raised inside a patched forward


class Unsupported(InvalidArgument):
    """What crossent's transformers integration cannot compute exactly (a model whose loss it does
    not reproduce, a head it would bypass, a trainer option, a library version): refused, with the
    remedy, instead of a different number."""


def transformers_missing(exc: ImportError) -> NoReturn:
    """Raised when crossent.integrations.transformers is imported without transformers."""
    raise ImportError(
        "crossent.integrations.transformers needs transformers>=4.46: "
        "pip install 'crossent[hf]'"
    ) from exc


# ---------------------------------------------------------------- the plain loss


def logits_tensor(fn: str, logits: object) -> torch.Tensor:
    if not torch.is_tensor(logits):
        raise InvalidArgumentType(f"{fn}: logits must be a tensor, got {type(logits).__name__}")
    return logits


def vocab_size(fn: str, vocab_size: int | None, logits: torch.Tensor) -> int:
    """The logits' last dimension V, which a given vocab_size must equal."""
    vocab = logits.shape[-1] if logits.dim() else 0
    if vocab_size is not None and vocab_size != vocab:
        raise InvalidArgument(
            f"{fn}: vocab_size={vocab_size} does not match the logits' last dimension "
            f"{vocab} (logits of shape {tuple(logits.shape)})"
        )
    return vocab


def labels_given(fn: str, labels: torch.Tensor | None, shift_labels: torch.Tensor | None) -> None:
    if labels is None and shift_labels is None:
        raise InvalidArgument(f"{fn}: labels and shift_labels are both None; give one")


def token_counts(
    fn: str, logits: torch.Tensor, shift_labels: torch.Tensor, rows: int, targets: int
) -> None:
    """One target per row of the flattened (B*T, V) logits."""
    if rows != targets:
        raise InvalidArgument(
            f"{fn}: logits of shape {tuple(logits.shape)} and labels of shape "
            f"{tuple(shift_labels.shape)} hold different numbers of tokens"
        )


def num_items_in_batch(fn: str, value: Any) -> torch.Tensor | int | float | None:
    """Trainer's token count for gradient accumulation: None, a number or a one-element tensor."""
    if value is None:
        return None
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise InvalidArgument(
                f"{fn}: num_items_in_batch must be a number or a one-element tensor, "
                f"got a tensor of shape {tuple(value.shape)}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(
            f"{fn}: num_items_in_batch must be a number or a one-element tensor, got {value!r}"
        )
    return value


def outputs_logits(fn: str, outputs: Any, logits: torch.Tensor | None) -> torch.Tensor:
    """The logits read from a model's outputs; a patched model in training returns none."""
    if logits is None:
        raise InvalidArgument(
            f"{fn}: the model's outputs have no logits (got "
            f"{type(outputs).__name__}); a patched model returns none in training: use "
            "patch() or compute_loss_func, not both"
        )
    return logits


# ---------------------------------------------------------------- patch / unpatch (patch time)


def pretrained_model(fn: str, model: object, base: type) -> None:
    """base: transformers.PreTrainedModel (passed in: this module does not import transformers)."""
    if not isinstance(model, base):
        raise InvalidArgumentType(
            f"{fn}: model must be a transformers PreTrainedModel, got {type(model).__name__}"
        )


def not_a_causal_lm(fn: str, model: nn.Module) -> NoReturn:
    raise Unsupported(
        f"{fn}: model must be a causal language model (a *ForCausalLM class) or a decoder-only "
        f"vision-language model whose loss is the causal-LM loss (a *ForConditionalGeneration "
        f"class such as Qwen2VLForConditionalGeneration), got {type(model).__name__}"
    )


def already_patched(fn: str, model: nn.Module) -> NoReturn:
    raise InvalidArgument(f"{fn}: {type(model).__name__} is already patched")


def not_patched(fn: str, model: nn.Module) -> NoReturn:
    raise InvalidArgument(f"{fn}: {type(model).__name__} is not patched")


def plain_linear_head(fn: str, model: nn.Module, head: object) -> nn.Linear:
    """A subclass with its own forward (quantised, LoRA, scaled) would be bypassed by the fused
    loss."""
    if head is None:
        raise Unsupported(
            f"{fn}: {type(model).__name__} has no output embedding (get_output_embeddings() is "
            "None), whose call crossent's fused loss would replace"
        )
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise Unsupported(
            f"{fn}: {type(model).__name__}'s output embedding must be a plain nn.Linear (or PEFT's "
            f"LoRA Linear over one), got {type(head).__name__}; crossent's fused loss would bypass "
            "its forward"
        )
    return head


def head_path(fn: str, model: nn.Module, path: str | None) -> str:
    """The output embedding's dotted name among the model's submodules (None: not one of them)."""
    if path is None:
        raise Unsupported(
            f"{fn}: {type(model).__name__}'s output embedding (get_output_embeddings()) is not one "
            "of the model's submodules"
        )
    return path


def chunk_size(fn: str, value: object) -> int | None:
    """linear_cross_entropy's chunk_size, checked at patch time by the same checker."""
    return count(fn, "chunk_size", value, what=" (rows per chunk)")


def config_number(fn: str, config: Any, name: str) -> float | None:
    """config.<name> (a logit scale or softcap): absent/None, or a positive finite number."""
    value = getattr(config, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(
            f"{fn}: config.{name} must be a positive finite number or None, got {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(
            f"{fn}: config.{name} must be a positive finite number or None, got {value!r}"
        )
    return float(value)


def forward_takes_labels(fn: str, model: nn.Module, signature: inspect.Signature) -> None:
    if "labels" not in signature.parameters:
        raise Unsupported(f"{fn}: {type(model).__name__}.forward takes no labels argument")


# ---------------------------------------------------------------- inside a patched forward


def captured_hidden(model: nn.Module, name: str, hidden: torch.Tensor | None) -> torch.Tensor:
    """The hidden states the stand-in head recorded: None if the forward never called the head."""
    if hidden is None:
        raise Unsupported(
            f"{PATCHED}: {type(model).__name__}'s forward did not call its output "
            f"embedding {name!r}; unpatch the model"
        )
    return hidden


def logit_probe(
    model: nn.Module, probe: tuple[float, ...], got: torch.Tensor | None, expected: torch.Tensor,
    scale: float, softcap: float | None,
) -> None:
    """The probe logits as the model's forward returned them (None: no such tensor came back) must
    equal ``expected``, the probe after the (scale, softcap) that patch read from the config."""
    if got is None or not torch.allclose(got, expected, rtol=1e-2, atol=1e-2):
        raise Unsupported(
            f"{PATCHED}: {type(model).__name__} transforms its logits in a way patch does "
            f"not know (probe {list(probe)} came back as "
            f"{None if got is None else got.tolist()}, expected {expected.tolist()} from "
            f"scale={scale}, softcap={softcap}); unpatch the model"
        )


def logit_probe_traced(model: nn.Module, logits: torch.Tensor | None, expected: torch.Tensor) -> None:
    """`logit_probe` while torch.compile traces: an assertion evaluated on the device."""
    message = (
        f"{PATCHED}: {type(model).__name__} transforms its logits in a way patch does not know "
        f"(checked under torch.compile); unpatch the model"
    )
    if logits is None:
        raise Unsupported(message)
    got = logits.reshape(-1, expected.numel())[0].to(torch.float32)
    want = expected.to(device=got.device, dtype=torch.float32)
    torch._assert_async(((got - want).abs() <= 1e-2 + 1e-2 * want.abs()).all(), message)


def kept_targets(
    model: nn.Module, shift_labels: torch.Tensor, sliced: torch.Tensor, kept: torch.Size
) -> torch.Tensor:
    """The shifted labels at the positions whose logits the model computes (logits_to_keep)."""
    if sliced.shape != kept:
        raise InvalidArgument(
            f"{PATCHED}: labels of shape {tuple(shift_labels.shape)} (shifted) do not match "
            f"the {tuple(kept)} positions whose logits {type(model).__name__} computes"
        )
    return sliced


def aux_loss_coefficient(model: nn.Module, coef: float | None) -> float:
    """The coefficient the probe found for the aux_loss a model returned (None: none was seen)."""
    if coef is None:
        raise Unsupported(
            f"{PATCHED}: {type(model).__name__} returned an aux_loss whose coefficient in its loss "
            "patch() could not learn (no aux_loss, or one too small to tell, when it probed the "
            "model, with output_router_logits=True where the forward takes it); unpatch the model"
        )
    return coef


# ---------------------------------------------------------------- PEFT, Trainer and TRL


def lora_head_unsupported(fn: str, model: nn.Module, why: str) -> NoReturn:
    raise Unsupported(
        f"{fn}: {type(model).__name__}'s output embedding is a PEFT LoRA layer crossent cannot "
        f"fuse: {why}; leave lm_head out of target_modules, or unpatch the model"
    )


def head_call_arguments(head: nn.Module, args: tuple, kwargs: dict) -> NoReturn:
    raise Unsupported(
        f"{PATCHED}: the output head ({type(head).__name__}) was called with extra arguments "
        f"{sorted(kwargs) or len(args)} (PEFT mixed-adapter batches?), which the fused loss cannot "
        "honour; unpatch the model"
    )


def peft_prompt_learning(model: nn.Module) -> None:
    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        raise Unsupported(
            f"patch: {type(model).__name__} uses a prompt-learning adapter "
            f"({type(config).__name__}), which crossent does not support (LoRA and other "
            "weight adapters are)"
        )


def trainer_compute_loss_func(fn: str) -> NoReturn:
    raise InvalidArgument(
        f"{fn}: this Trainer has a compute_loss_func, so it takes the labels out and computes the "
        "loss from the logits: crossent's patch would never run; use patch() or "
        "compute_loss_func, not both"
    )


def _version(v: tuple[int, ...] | None) -> str:
    return "not imported" if v is None else ".".join(map(str, v))


def trl_unsupported(fn: str, version: tuple[int, ...] | None, minimum: tuple[int, ...], why: str,
                    tested: tuple[str, ...] = ()) -> NoReturn:
    raise Unsupported(
        f"{fn}: TRL {_version(version)} is not supported ({why}): crossent patches TRL's trainers "
        f"from TRL {_version(minimum)} on (tested: TRL {', '.join(tested) or 'see the README'}); "
        f"pip install 'trl>={_version(minimum)}'"
    )


def trl_trainer_unsupported(fn: str, trainer: object, names: tuple[str, ...]) -> NoReturn:
    raise Unsupported(
        f"{fn}: {type(trainer).__name__} is not supported: crossent patches {', '.join(names)} "
        "(whose use of the fused LM head's outputs it matches)"
    )


def trl_option_unsupported(fn: str, obj: object, option: str) -> NoReturn:
    raise Unsupported(
        f"{fn}: {type(obj).__name__} with {option} is not supported: crossent's fused loss would "
        "not compute the training loss"
    )


def trl_forward_missing(fn: str, model: nn.Module, outer: object) -> NoReturn:
    by = "none" if outer is None else getattr(getattr(outer, "__func__", outer), "__qualname__", repr(outer))
    raise InvalidArgument(
        f"{fn}: {type(model).__name__}'s outermost forward is not TRL's fused LM head (got {by}); "
        "patch the trainer after building it and before trainer.train()"
    )


def trl_labels(model: nn.Module, labels: object, shift_labels: object) -> None:
    if labels is None and shift_labels is None:
        raise InvalidArgument(
            f"{PATCHED}: {type(model).__name__} was called with fused_lm_head=True but without "
            "labels or shift_labels; TRL's fused LM head needs one"
        )


def trl_targets(model: nn.Module, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    if target.shape != hidden.shape[:-1]:
        raise InvalidArgument(
            f"{PATCHED}: labels of shape {tuple(target.shape)} (shifted) do not match the "
            f"{tuple(hidden.shape[:-1])} positions {type(model).__name__}'s head sees"
        )
    return target


def no_labels_message(model: nn.Module) -> str:
    return (
        f"{PATCHED}: {type(model).__name__} ran a training forward without labels, so crossent's "
        "fused loss did not run and the logits were built (a Trainer with compute_loss_func "
        "takes the labels out: use patch() or compute_loss_func, not both); warned once per model"
    )


def bypassed_message(model: nn.Module, by: str) -> str:
    return (
        f"{PATCHED}: {type(model).__name__}'s forward was wrapped after patch() by {by}, which "
        "computed this training step's loss without crossent; patch the trainer once it is built: "
        "crossent.integrations.transformers.patch(trainer); warned once per model"
    )
