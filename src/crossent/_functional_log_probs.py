"""The public log-probability functions (re-exported by `crossent.functional` and `crossent`):
checks, options, autocast, one dispatch call each. The math: backends/rows_log_probs.py."""

from __future__ import annotations

from typing import Literal, overload

import torch

from . import _autocast, _dispatch, _docs
from ._checks import log_probs as _checks


@overload
def log_probs(input: torch.Tensor, target: torch.Tensor, *, temperature: float = ...,
              softcap: float | None = ..., ignore_index: int = ...,
              return_entropy: Literal[False] = ...) -> torch.Tensor: ...
@overload
def log_probs(input: torch.Tensor, target: torch.Tensor, *, temperature: float = ...,
              softcap: float | None = ..., ignore_index: int = ...,
              return_entropy: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...


def log_probs(input, target, *, temperature=1.0, softcap=None, ignore_index=-100, return_entropy=False):
    fn = "log_probs"
    opts, entropy = _checks.options(fn, ignore_index=ignore_index, temperature=temperature, softcap=softcap,
                                    return_entropy=return_entropy)
    input, target = _checks.logits(fn, input, target, opts.ignore_index)
    with _autocast.maybe_off(input):  # (the math runs in float32 anyway, as torch's log_softmax under autocast)
        return _dispatch.log_probs(input, target, opts, entropy)


log_probs.__doc__ = _docs.LOG_PROBS


@overload
def linear_log_probs(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                     linear_bias: torch.Tensor | None = ..., temperature: float = ...,
                     softcap: float | None = ..., ignore_index: int = ...,
                     return_entropy: Literal[False] = ..., chunk_size: int | None = ...) -> torch.Tensor: ...
@overload
def linear_log_probs(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                     linear_bias: torch.Tensor | None = ..., temperature: float = ...,
                     softcap: float | None = ..., ignore_index: int = ...,
                     return_entropy: Literal[True], chunk_size: int | None = ...
                     ) -> tuple[torch.Tensor, torch.Tensor]: ...


def linear_log_probs(input, linear_weight, target, *, linear_bias=None, temperature=1.0, softcap=None,
                     ignore_index=-100, return_entropy=False, chunk_size=None):
    fn = "linear_log_probs"
    opts, entropy = _checks.options(fn, ignore_index=ignore_index, temperature=temperature, softcap=softcap,
                                    return_entropy=return_entropy, chunk_size=chunk_size)
    if _autocast.active(input):  # F.linear in the autocast dtype, the log-probs in float32
        input, linear_weight, linear_bias, _, _ = _autocast.linear_args(input, linear_weight, linear_bias,
                                                                        None, None)
    with _autocast.maybe_off(input):
        input, target = _checks.linear(fn, input, linear_weight, linear_bias, target, opts.ignore_index)
        return flat_call(_dispatch.linear_log_probs, input, linear_weight, target, linear_bias, opts, entropy)


def flat_call(run, input, linear_weight, target, linear_bias, opts, entropy, *rest):
    """``run`` on input (N, D) and target (N,) flattened from (*, D) and (*); its outputs
    reshaped back to (*)."""
    shape = input.shape[:-1]
    out = run(input.reshape(-1, input.shape[-1]), linear_weight, target.reshape(-1), linear_bias, opts,
              entropy, *rest)
    if entropy:
        return out[0].view(shape), out[1].view(shape)
    return out.view(shape)


linear_log_probs.__doc__ = _docs.LINEAR_LOG_PROBS
