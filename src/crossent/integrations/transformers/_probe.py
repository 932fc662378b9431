"""Running a model's own forward on a tiny input with designed logits: the machinery of the
patch-time probe whose results ``_contract`` reads.

A run calls the forward crossent's layer will wrap (the class's, or a wrapper installed before
patch: accelerate's, TRL's), through ``model(...)`` so that the model's hooks run (FSDP's and
ZeRO-3's parameter gathering), with the output head swapped for ``_Designed``: it returns the
logits ``designed_logits`` makes instead of computing any -- the head's weight is never read --
and exposes the head's attributes. Around all runs (``probing``): training mode (the patched
path runs only in training), no gradient, warnings silenced, crossent's own layers of the model
made pass-throughs; afterwards the model's state is as it was (``_Snapshot``). Each run forks the RNG
of every device the model is on, and Python's and NumPy's global RNGs (BigBird draws its random
attention blocks from NumPy's), so each starts from, and leaves, the caller's RNG state.
Cost: one backbone pass over ``TOKENS`` tokens and one (1, T, V) tensor per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import warnings
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..._checks import integrations_probe as _checks
from . import _head, _layers
from ._common import IGNORE_INDEX

TOKENS = 8  # probe length: a multiple of the chunk lengths some models require in training
# (Reformer: 4), with next-token targets on both sides of the -100 (at index 2)
BIG = 24.0  # designed logits of -BIG and -BIG/2 in columns 0 and 1: a softcap up to ~100 bends
# them visibly even in bfloat16 (30 tanh(24/30) = 19.9; 100 tanh(0.24) = 23.5, a bf16 step 0.125);
# negative, so that they do not dominate the softmax (the losses stay ~log V, their float32
# rounding small beside a MoE aux term such as 0.001 x 2)


@dataclasses.dataclass
class Run:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    aux: torch.Tensor | None
    low_precision: bool  # the designed or the returned logits were 16-bit
    loss_tol: float  # relative: float32 rounding of the loss, or 16-bit where the loss is 16-bit


class _Designed(nn.Module):
    """Stands in for the head during a probe run: returns the designed logits, counts its calls."""

    def __init__(self, head: nn.Module, vocab: int, labels: torch.Tensor) -> None:
        super().__init__()
        _head.expose(self, head)
        self.vocab, self.labels, self.calls, self.lead, self.dtype = vocab, labels, 0, None, None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (1, T, D) -> (1, T, V)
        self.calls += 1
        self.lead, self.dtype = tuple(hidden.shape[:-1]), hidden.dtype
        return designed_logits(self.lead, self.vocab, self.labels).to(hidden.device, hidden.dtype)


def designed_logits(lead: tuple[int, ...], vocab: int, labels: torch.Tensor) -> torch.Tensor:
    """(*lead, V) float32 logits, exact in float16 and bfloat16: a pattern of multiples of 0.5 in
    [-2, 2], -BIG and -BIG/2 in columns 0 and 1 (for softcaps), 2.5 at each position's next label
    and -1.5 at its own (the shifted and unshifted losses differ by ~4 nats per token)."""
    rows = 1
    for n in lead:
        rows *= n
    t = torch.arange(rows).unsqueeze(1)
    logits = (((7 * t + 3 * torch.arange(vocab)) % 9) - 4) * 0.5  # (rows, V)
    logits[:, 0], logits[:, 1] = -BIG, -BIG / 2
    if lead == tuple(labels.shape):
        y = labels.reshape(-1).cpu()
        own = (y >= 0).nonzero().squeeze(1)
        logits[own, y[own]] = -1.5
        nxt = (y[1:] >= 0).nonzero().squeeze(1)
        logits[nxt, y[nxt + 1]] = 2.5
    return logits.reshape(*lead, vocab)


def inputs(fn: str, model: nn.Module, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (1, TOKENS) of ordinary tokens and their labels with one -100."""
    ids = _checks.probe_tokens(fn, model, _tokens(model, vocab), TOKENS)
    labels = ids.clone()
    labels[0, 2] = IGNORE_INDEX
    return ids, labels


def _tokens(model: nn.Module, vocab: int) -> list[int]:
    """Token ids in [3, V) (and inside the input embedding) that no config names as special."""
    special: set[int] = set()
    # (vars, not getattr: configs with per-layer fields refuse global reads of those)
    configs = [model.config] + [v for v in vars(model.config).values() if hasattr(v, "to_dict")]
    for config in configs:
        for name, value in vars(config).items():
            if "token" in name and not name.startswith("_"):
                values = value if isinstance(value, (list, tuple)) else [value]
                special.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))
    embeddings = _embeddings(model)
    limit = min(vocab, getattr(embeddings, "num_embeddings", vocab))
    return [t for t in range(3, limit) if t not in special]


def _embeddings(model: nn.Module) -> Any:
    return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None


@contextlib.contextmanager
def probing(model: nn.Module):
    """Training mode, no gradient, warnings off, crossent's layers of the model pass-throughs; the
    model's state as before afterwards (``_Snapshot``)."""
    snapshot = _Snapshot(model)
    active = [s for s in _layers.layers(model).values() if s.active]
    for state in active:
        state.active = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the probe's own (e.g. checkpointing without grad)
            model.train()
            yield
    finally:
        snapshot.restore()
        for state in active:
            state.active = True


class _Snapshot:
    """What a forward may change in a model, put back by ``restore``: every module's attributes
    that existed before (its training flag; BigBird switches a short input's block-sparse attention
    to full attention for good: ``attention_type``), its submodules (BigBird's attention module),
    and the values of buffers changed in place (running statistics; found by their version
    counters, from copies taken before). Not the tables of parameters and buffers: FSDP2 swaps
    sharded and unsharded parameters there and keeps its own account of which is in place.
    Attributes a forward adds are kept, as after any first forward: lazy initialisation such as
    transformers' output-capturing hooks, whose flag and hooks must stay together. Cost: one dict
    copy per module and one copy of the buffers (position tables, a few MiB at most in
    transformers' LMs)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [(m, dict(vars(m)), dict(m._modules)) for m in model.modules()]
        buffers = {id(b): b for m in model.modules() for b in m._buffers.values() if b is not None}
        self.buffers = [(b, b._version, b.detach().clone()) for b in buffers.values()]

    def restore(self) -> None:
        for module, attributes, submodules in self.modules:
            now = vars(module)
            for name, value in attributes.items():
                if name not in ("_parameters", "_buffers") and now.get(name) is not value:
                    now[name] = value
            table = module._modules
            if table.keys() != submodules.keys() or any(table[k] is not v for k, v in submodules.items()):
                table.clear()
                table.update(submodules)
        with torch.no_grad():
            for buffer, version, copy in self.buffers:
                if buffer._version != version:
                    buffer.copy_(copy)


@contextlib.contextmanager
def _forked_rngs(model: nn.Module):
    """Every RNG a forward may draw from, as it was afterwards: torch's on the CPU and on each
    device of the model's parameters, Python's, and NumPy's (if imported)."""
    devices: dict[str, set[int]] = {}
    for p in model.parameters():
        if p.device.type != "cpu":
            devices.setdefault(p.device.type, set()).add(p.device.index or 0)
    numpy = sys.modules.get("numpy")
    python_state = random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            for kind, index in devices.items():
                stack.enter_context(torch.random.fork_rng(devices=sorted(index), device_type=kind))
            yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)


def run(fn: str, model: nn.Module, slot: _head.Slot, head: nn.Module, vocab: int,
        labels: torch.Tensor, arguments: dict, *, strict: bool = True) -> Run | None:
    """model(**arguments) through its hooks, the forward below crossent's layer, the head swapped
    for the designed logits. If the model's forward raises: refused (strict), or None."""
    stand_in = _Designed(head, vocab, labels)
    below = vars(model).get("forward") or type(model).forward.__get__(model)
    previous = vars(model).get("forward")
    weight = getattr(_embeddings(model), "weight", None)
    device = weight.device if torch.is_tensor(weight) else next(model.parameters()).device
    arguments = {k: v.to(device) if torch.is_tensor(v) else v for k, v in arguments.items()}
    vars(model)["forward"] = lambda *args, **kwargs: below(*args, **kwargs)
    module = slot.swap(stand_in)
    try:
        with _forked_rngs(model):
            out = model(**arguments)
    except Exception as exc:  # the model's own error, chained: crossent cannot learn its loss
        if strict or _checks.out_of_memory(exc):
            _checks.probe_failed(fn, model, exc)  # (out of memory: raised as it is)
        return None
    finally:
        slot.swap(module)
        if previous is None:
            del vars(model)["forward"]
        else:
            vars(model)["forward"] = previous
    if stand_in.calls != 1 or stand_in.lead != tuple(labels.shape):
        _checks.probe_head_calls(fn, model, slot.path, stand_in.calls, stand_in.lead, tuple(labels.shape))
    if isinstance(out, ModelOutput):
        loss, logits, aux = out.get("loss"), out.get("logits"), out.get("aux_loss")
    else:  # return_dict=False: (loss, logits, ...) with a loss, (logits, ...) without
        with_loss = torch.is_tensor(out[0]) and out[0].dim() == 0
        loss, logits, aux = (out[0] if with_loss else None), out[1 if with_loss else 0], None
    half = (torch.float16, torch.bfloat16)
    low = stand_in.dtype in half or (torch.is_tensor(logits) and logits.dtype in half)
    # The loss is checked against float64 CE of the *returned* logits: only its own rounding counts.
    loss_tol = 1e-2 if torch.is_tensor(loss) and loss.dtype in half else 1e-5
    return Run(loss, logits, aux if torch.is_tensor(aux) else None, low, loss_tol)
