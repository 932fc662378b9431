"""patch computes the loss each model's own forward computes (``_contract``): labels shifted or as
given, loss keyword arguments used or passed on, MoE aux coefficients, the logit factors the
forward applies, heads whose weight the forward reads -- or refuses at patch.

Each equality at two sizes: V = 128 (crossent's dispatch sends these small problems to torch's
F.linear + cross_entropy) and V = 32000 on crossent's fused kernels (forced: 3 x 16 tokens).
Oracle: the unpatched twin (same weights), loss and every parameter's gradient."""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("crossent.integrations.transformers")

import hf_zoo  # noqa: E402

from conftest import sampled  # noqa: E402

TOL32 = dict(atol=2e-6, rtol=2e-5)
SIZES = {"small": (128, None), "fused": (32000, "fused")}  # (vocabulary, forced backend)

# The decoders whose own loss does not shift the labels (CrossEntropyLoss on labels as given):
# patched with the shifted causal-LM loss before issue 20 (BART's 5.77692 became 6.21605).
UNSHIFTED = ["BartForCausalLM", "MBartForCausalLM", "MarianForCausalLM", "PegasusForCausalLM",
             "PLBartForCausalLM", "BlenderbotSmallForCausalLM", "MvpForCausalLM",
             "TrOCRForCausalLM", "WhisperForCausalLM"]
# Forwards that read lm_head.weight (its dtype) around the head's call.
READS_HEAD_WEIGHT = ["MambaForCausalLM", "Mamba2ForCausalLM", "FalconMambaForCausalLM",
                     "xLSTMForCausalLM"]


def _model(name, vocab=128, **config):
    if not hasattr(transformers, name):
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_zoo.build(name, vocab=vocab, **config)


def _batch(vocab, b=3, t=16, seed=1):  # (t: a multiple of the chunked scans' 8)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100
    labels[2, -3:] = -100
    return dict(input_ids=ids, labels=labels)


def _step(model, backend=None, **inputs):
    import crossent

    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    with crossent.use_backend(backend) if backend else warnings.catch_warnings():
        out = model(**inputs)
        out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_twins_equal(model, size, **extra):
    """patch(copy) == model, loss and every gradient; returns (patched, unpatched loss)."""
    vocab, backend = SIZES[size]
    twin = hf.patch(copy.deepcopy(model))
    inputs = {**_batch(vocab), **extra}
    if "use_cache" in inspect.signature(type(model).forward).parameters:
        inputs["use_cache"] = False  # a training step (xLSTM's cache breaks its chunked scan)
    ref, ref_grads = _step(model, **inputs)
    out, grads = _step(twin, backend, **inputs)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss, **TOL32)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL32, msg=lambda m, n=name: f"{n}: {m}")
    return twin, ref.loss


def _contract(model):
    from crossent.integrations.transformers import _layers

    return _layers.active(model).contract


# ------------------------------------------------------------------ labels as given


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", UNSHIFTED)
def test_decoders_that_do_not_shift_their_labels_keep_their_loss(name, size):
    model = _model(name, vocab=SIZES[size][0])
    twin, loss = _assert_twins_equal(model, size)
    assert hf.is_patched(twin)
    assert _contract(twin).shift is False and _contract(twin).loss_kwargs is False
    # and that loss is not the causal-LM one (which patch computed for them before)
    with torch.no_grad():
        logits = model(input_ids=_batch(SIZES[size][0])["input_ids"]).logits
    labels = _batch(SIZES[size][0])["labels"]
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert abs(shifted.item() - loss.item()) > 0.01


@pytest.mark.parametrize("name", ["BartForCausalLM", "LlamaForCausalLM"])
def test_loss_keyword_arguments_are_used_or_passed_on_as_the_model_does(name):
    """Llama's loss uses shift_labels and num_items_in_batch; BART's forward passes them on to
    its decoder, unused (its loss stays the mean over its labels): patched, each as unpatched."""
    model = _model(name)
    shift = _batch(128, seed=5)["labels"]
    twin, _ = _assert_twins_equal(model, "small", shift_labels=shift, num_items_in_batch=17)
    assert _contract(twin).loss_kwargs is (name == "LlamaForCausalLM")


# Every unshifted decoder's loss and gradients are checked above at both sizes; the Trainer's
# 4 steps (the same contract, through num_items_in_batch) run on BART (the example) and two
# decoders of other families by default, on all nine under CROSSENT_FULL_GRID=1.
@pytest.mark.parametrize("name", sampled(UNSHIFTED, ["BartForCausalLM", "TrOCRForCausalLM", "WhisperForCausalLM"]))
def test_trainer_on_a_decoder_that_does_not_shift_equals_unpatched(name, tmp_path):
    """The issue's reproduction: 4 Trainer steps (gradient accumulation 2, so the Trainer passes
    num_items_in_batch), patched and unpatched: the same logged losses and the same trained
    weights (each step's update follows the previous step's gradients)."""
    from torch.utils.data import Dataset

    rows = 16  # 4 steps x 2 micro-batches x 2 rows

    class Rows(Dataset):
        def __init__(self):
            b = _batch(128, b=rows, seed=3)
            self.rows = [{k: v[i] for k, v in b.items()} for i in range(rows)]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    def losses(model, out):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / out), per_device_train_batch_size=2,
            gradient_accumulation_steps=2, max_steps=4, logging_steps=1, learning_rate=1e-2,
            report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    model = _model(name)
    patched = hf.patch(copy.deepcopy(model))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: OpenMP's workers wait for each other on a busy machine
    try:
        want, got = losses(model, "a"), losses(patched, "b")
    finally:
        torch.set_num_threads(threads)
    assert len(want) == 4
    assert got == pytest.approx(want, rel=1e-5)
    assert hf.is_patched(patched)
    trained = dict(model.named_parameters())
    for key, p in patched.named_parameters():
        torch.testing.assert_close(p, trained[key], atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


# ------------------------------------------------------------------ heads and logit factors


# By default each size runs on two of the Mamba family, Mamba at both (xLSTM trains at both
# sizes in test_softcaps_under_other_config_names); every (class, size) under CROSSENT_FULL_GRID=1.
HEAD_WEIGHT_CASES = sampled([(n, s) for n in READS_HEAD_WEIGHT for s in SIZES],
                            [("MambaForCausalLM", "small"), ("MambaForCausalLM", "fused"),
                             ("Mamba2ForCausalLM", "fused"), ("FalconMambaForCausalLM", "small")])


@pytest.mark.parametrize("name, size", HEAD_WEIGHT_CASES)
def test_forwards_that_read_the_heads_weight_train(name, size):
    """Mamba's forward runs lm_head(h.to(lm_head.weight.dtype)): the stand-in head exposes the
    head's weight (no AttributeError at the first step)."""
    _assert_twins_equal(_model(name, vocab=SIZES[size][0]), size)


@pytest.mark.parametrize("size", SIZES)
def test_falcon_h1_lm_head_multiplier_is_applied_like_a_logit_scale(size):
    model = _model("FalconH1ForCausalLM", vocab=SIZES[size][0], lm_head_multiplier=0.375)
    twin, _ = _assert_twins_equal(model, size)
    assert _contract(twin).scale == 0.375


@pytest.mark.parametrize("size", SIZES)
def test_minicpm3_scales_its_hidden_states_not_its_logits(size):
    """Its config's logits_scaling divides the hidden states before the head (the capture sees
    them so): the probe keeps no logit factor, where the name alone would have applied one."""
    model = _model("MiniCPM3ForCausalLM", vocab=SIZES[size][0], dim_model_base=8)
    twin, _ = _assert_twins_equal(model, size)
    assert model.config.logits_scaling == 4.0 and _contract(twin).scale == 1.0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name, cap", [("RecurrentGemmaForCausalLM", "logits_soft_cap"),
                                       ("xLSTMForCausalLM", "output_logit_soft_cap")])
def test_softcaps_under_other_config_names(name, cap, size):
    twin, _ = _assert_twins_equal(_model(name, vocab=SIZES[size][0], **{cap: 1.5}), size)
    assert _contract(twin).softcap == 1.5


@pytest.mark.parametrize("size", SIZES)
def test_a_head_nested_in_the_model(size):
    """BERT-style LM heads: the head is cls.predictions.decoder, after a transform."""
    twin, _ = _assert_twins_equal(_model("BertLMHeadModel", vocab=SIZES[size][0]), size)
    from crossent.integrations.transformers import _layers

    assert _layers.active(twin).slot.path == "cls.predictions.decoder"


# ------------------------------------------------------------------ mixture of experts


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name, coefficient", [
    ("MixtralForCausalLM", "router_aux_loss_coef"),
    ("JetMoeForCausalLM", "aux_loss_coef"),
])
def test_moe_aux_loss_coefficient_is_learnt_from_the_model(name, coefficient, size):
    model = _model(name, vocab=SIZES[size][0], output_router_logits=True, **{coefficient: 0.25})
    twin, _ = _assert_twins_equal(model, size)
    assert _contract(twin).aux_coef == 0.25


def test_dbrx_aux_loss_coefficient_read_from_the_model_attribute():
    """DBRX keeps it as model.router_aux_loss_coef (its config's ffn_config.moe_loss_weight)."""
    model = _model("DbrxForCausalLM", output_router_logits=True, ffn_config={
        "ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2, "moe_loss_weight": 0.125})
    twin, _ = _assert_twins_equal(model, "small")
    assert _contract(twin).aux_coef == 0.125
