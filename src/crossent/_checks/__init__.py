"""Argument and input validation for every public loss: every error message of crossent lives here.

Messages follow one pattern: ``"<function>: <argument> <what is wrong>, got <value>"``. Checks that
only look at Python values and tensor metadata run on every call (they cost no device work). Checks
that read tensor *values* (class-index targets in range, BCE probabilities in [0, 1]) need the data:
on CPU they always run (a few microseconds); on an accelerator they force a device->host sync, so
they run only when enabled with ``CROSSENT_CHECK_VALUES=1`` in the environment (read at call time)
or ``crossent.check_values(True)``. Without them an out-of-range target on a GPU fails inside the
kernel, as it does in PyTorch.

Modules: `losses` (cross_entropy, nll_loss, the binary losses, shared options, autograd errors),
`linear` (linear_cross_entropy and its module), `integrations` (the transformers integration);
`_common` holds the pieces of the message pattern. Callers use the names re-exported here.
"""

from . import distillation, integrations
from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    TargetOutOfRange,
    check_values,
    count,
    torch_int,
)
from .gradients import argument_gradients
from .linear import (
    linear_chunking,
    linear_module,
    linear_no_fused_gradient,
    linear_operands,
    linear_options_for_call,
    linear_targets,
)
from .losses import (
    binary_pair,
    broadcast_weight,
    class_weight,
    deprecated_reduction,
    inplace_input,
    logits_input,
    logits_loss_arguments,
    loss_dtype,
    loss_options,
    probabilities_in_unit_interval,
    recompute_inputs_gone,
    recompute_inputs_modified,
    reduction,
    target_gradients,
    triton_unusable,
    unknown_backend,
    unsafe_to_autocast,
)
from .targets import logits_class_indices, logits_targets

__all__ = [
    "argument_gradients", "distillation", "InvalidArgument", "InvalidArgumentType", "TargetOutOfRange", "integrations", "binary_pair", "broadcast_weight", "check_values", "class_weight", "deprecated_reduction",
    "inplace_input", "logits_class_indices", "logits_targets", "count", "torch_int", "linear_chunking", "linear_module",
    "linear_no_fused_gradient", "linear_options_for_call", "triton_unusable", "linear_operands", "linear_targets", "logits_input", "logits_loss_arguments", "loss_dtype",
    "loss_options", "recompute_inputs_gone", "recompute_inputs_modified", "probabilities_in_unit_interval", "reduction", "target_gradients", "unknown_backend", "unsafe_to_autocast",
]
