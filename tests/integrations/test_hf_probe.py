"""The patch-time probe (``_probe``) leaves the model and the process as it found them, runs
through the model's hooks, and refuses -- with ``Unsupported``, naming what the model did --
everything whose loss crossent cannot reproduce, leaving a refused model untouched."""

from __future__ import annotations

import random
import warnings

import numpy
import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("crossent.integrations.transformers")

import hf_zoo  # noqa: E402

from crossent._checks.integrations import Unsupported  # noqa: E402


def _model(name="LlamaForCausalLM", **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_zoo.build(name, **config)


def _untouched(model):
    assert not hf.is_patched(model)
    assert "forward" not in vars(model) and "_crossent_layers" not in vars(model)


# ------------------------------------------------------------------ no side effects


def test_rng_states_training_flags_and_gradients_are_as_before():
    model = _model()
    model.eval()
    model.model.layers[0].train()  # mixed modes are kept, module by module
    modes = {n: m.training for n, m in model.named_modules()}
    torch.manual_seed(7), numpy.random.seed(7), random.seed(7)
    want = torch.rand(3), numpy.random.rand(3), random.random()
    torch.manual_seed(7), numpy.random.seed(7), random.seed(7)
    hf.patch(model)
    got = torch.rand(3), numpy.random.rand(3), random.random()
    assert torch.equal(got[0], want[0]) and (got[1] == want[1]).all() and got[2] == want[2]
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


def test_buffers_changed_in_place_by_a_forward_are_put_back():
    model = _model()
    model.model.register_buffer("steps", torch.zeros(()))

    def count(module, args):
        module.steps.add_(1)

    model.model.register_forward_pre_hook(count)
    hf.patch(model)
    assert model.model.steps.item() == 0  # the probe's forwards ran the hook, and were undone


def test_a_forward_that_restructures_the_model_is_undone():
    """BigBird switches a short input's block-sparse attention to full attention for good (its
    attention_type and its attention submodule): the probe's 8 tokens must not do that."""
    model = _model("BigBirdForCausalLM", attention_type="block_sparse")
    attention = model.bert.encoder.layer[0].attention
    before = type(attention.self)
    hf.patch(model)
    assert model.bert.attention_type == "block_sparse" and attention.attention_type == "block_sparse"
    assert type(attention.self) is before


def test_warning_filters_are_as_before():
    model = _model()
    before = list(warnings.filters)
    hf.patch(model)
    assert warnings.filters == before


def test_the_probe_runs_through_the_models_hooks_not_the_heads():
    """FSDP2's and ZeRO-3's gathering hooks hang on the model: the probe's forwards run them.
    The head's weight is never read (its stand-in returns designed logits): its hooks do not run."""
    model = _model()
    calls = {"model": 0, "head": 0}
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__("model", calls["model"] + 1))
    model.lm_head.register_forward_pre_hook(lambda module, args: calls.__setitem__("head", calls["head"] + 1))
    hf.patch(model)
    assert calls["model"] >= 1 and calls["head"] == 0


def test_probe_runs_in_bfloat16():
    """Designed logits are exact in 16 bits; the loss is checked at its own precision."""
    model = _model().to(torch.bfloat16)
    hf.patch(model)
    ids = torch.randint(3, hf_zoo.VOCAB, (2, 8))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


# ------------------------------------------------------------------ refusals


class ExtraLossLlamaForCausalLM(transformers.LlamaForCausalLM):
    """Adds a term to the loss that crossent does not compute."""

    def forward(self, *args, labels=None, **kwargs):
        out = super().forward(*args, labels=labels, **kwargs)
        if out.loss is not None:
            out.loss = out.loss + 0.1 * out.logits.float().logsumexp(-1).pow(2).mean()
        return out


class WeightLogitsLlamaForCausalLM(transformers.LlamaForCausalLM):
    """Computes its logits from lm_head.weight without calling the head."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden = self.model(input_ids=input_ids).last_hidden_state
        logits = torch.nn.functional.linear(hidden, self.lm_head.weight)
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class BrokenLlamaForCausalLM(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        raise IndexError("needs pixel values")


class OutOfMemoryLlamaForCausalLM(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def _subclass(cls):
    torch.manual_seed(0)
    return cls(_model().config)


@pytest.mark.parametrize("build, match", [
    pytest.param(lambda: _subclass(ExtraLossLlamaForCausalLM), r"computes a loss crossent does not reproduce: "
                 r"on a probe input .* it returned [\d.]+, where the mean cross-entropy of its "
                 r"logits is [\d.]+ with the labels shifted", id="extra-loss-term"),
    pytest.param(lambda: _subclass(WeightLogitsLlamaForCausalLM), "did not call its output embedding 'lm_head'",
                 id="logits-from-the-weight"),
    pytest.param(lambda: _subclass(BrokenLlamaForCausalLM), r"failed on a probe input .*IndexError: needs pixel values",
                 id="forward-fails-on-the-probe"),
    pytest.param(lambda: _model("ProphetNetForCausalLM"), r"called its output embedding 'lm_head' 1 "
                 r"time\(s\), on positions of shape \(1, 2, 8\)", id="prophetnet-ngram-streams"),
    pytest.param(lambda: _model("MusicgenForCausalLM"), "must be a plain nn.Linear .* got ModuleList",
                 id="musicgen-one-head-per-codebook"),
    pytest.param(lambda: _model("ClvpForCausalLM"), r"has no output embedding \(get_output_embeddings\(\) is None\)",
                 id="clvp-no-output-embedding"),
])
def test_what_crossent_cannot_reproduce_is_refused_at_patch(build, match):
    model = build()
    with pytest.raises(Unsupported, match=match) as info:
        hf.patch(model)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    _untouched(model)


def test_the_models_own_error_is_chained_to_the_refusal():
    model = _subclass(BrokenLlamaForCausalLM)
    with pytest.raises(Unsupported) as info:
        hf.patch(model)
    assert isinstance(info.value.__cause__, IndexError)


def test_out_of_memory_in_the_probe_is_raised_as_it_is():
    """Not a property of the model: not turned into a refusal."""
    model = _subclass(OutOfMemoryLlamaForCausalLM)
    with pytest.raises(torch.OutOfMemoryError):
        hf.patch(model)
    _untouched(model)


def test_a_model_on_the_meta_device_is_refused_with_the_remedy():
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(_model().config)
    with pytest.raises(Unsupported, match=r"parameters on the meta device .*patch it once its weights are materialised"):
        hf.patch(model)
    _untouched(model)


def test_an_aux_loss_whose_coefficient_was_not_learnt_raises_instead_of_being_dropped():
    """Mixtral probed without its router logits (the probe could not ask for them), then
    returning an aux_loss: the patched step raises, it does not leave the term out."""
    from crossent.integrations.transformers import _layers

    model = hf.patch(_model("MixtralForCausalLM", output_router_logits=True))
    state = _layers.active(model)
    state.contract = type(state.contract)(aux_coef=None)  # as if no aux_loss had been seen
    ids = torch.randint(3, hf_zoo.VOCAB, (2, 8))
    with pytest.raises(Unsupported, match="returned an aux_loss whose coefficient in its loss patch"):
        model(input_ids=ids, labels=ids)


def test_gradient_checkpointing():
    """The probe runs in training mode without gradient: checkpointed layers are probed as they
    run (their warnings about it silenced), and train patched as unpatched."""
    import copy

    model = _model()
    model.gradient_checkpointing_enable()
    ids = torch.randint(3, hf_zoo.VOCAB, (2, 8))
    ref = model(input_ids=ids, labels=ids, use_cache=False).loss
    twin = hf.patch(copy.deepcopy(model))
    torch.testing.assert_close(twin(input_ids=ids, labels=ids, use_cache=False).loss, ref)
