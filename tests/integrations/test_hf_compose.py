"""patch composes with PEFT, accelerate and torch.compile, in either order; unpatch removes only
crossent's layer. Tiny random Llama (no downloads); oracle: the same model unpatched."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("crossent.integrations.transformers")
import trl_helpers as H  # noqa: E402

import crossent  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def _fused_path():
    with crossent.use_backend("fused"):
        yield


def _batch(b=3, t=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, H.VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, :5] = -100
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _step(model, batch, seed=0):
    """Loss and the gradients of the trainable parameters (dropout drawn from `seed`)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(got, want):
    (out, grads), (ref, ref_grads) = got, want
    assert out.logits is None and ref.logits is not None  # crossent ran; the reference did not
    torch.testing.assert_close(out.loss, ref.loss, **TOL)
    assert grads.keys() == ref_grads.keys() and grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------ PEFT


def _lora(model, targets, dropout=0.0):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                             task_type="CAUSAL_LM", init_lora_weights=False)  # B != 0: real terms
    torch.manual_seed(7)
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("targets, dropout", [
    (["q_proj", "v_proj"], 0.0),
    (["q_proj", "v_proj", "lm_head"], 0.0),
    (["q_proj", "lm_head"], 0.25),  # dropout: the same draws as PEFT's own forward
])
def test_peft_lora_gradients_equal_unpatched(targets, dropout):
    ref = _lora(H.llama(), targets, dropout)
    ours = copy.deepcopy(ref)
    batch = _batch()
    want = _step(ref, batch)
    hf.patch(ours)
    assert hf.is_patched(ours) and hf.is_patched(ours.get_base_model())
    _assert_same(_step(ours, batch), want)
    assert any("lm_head" in n for n in want[1]) == ("lm_head" in targets)
    hf.unpatch(ours)
    assert not hf.is_patched(ours) and "forward" not in vars(ours.get_base_model())


def test_peft_modules_to_save_head_gradients_equal_unpatched():
    """modules_to_save=["lm_head"] (how new tokens are trained): the trained copy is the head."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                             task_type="CAUSAL_LM", init_lora_weights=False)
    torch.manual_seed(7)
    ref = peft.get_peft_model(H.llama(), config)
    with torch.no_grad():  # the copy differs from the original: reading the wrong one shows
        ref.get_base_model().lm_head.modules_to_save["default"].weight.mul_(1.5)
    ours = hf.patch(copy.deepcopy(ref))
    batch = _batch()
    want = _step(ref, batch)
    assert any("modules_to_save" in n for n in want[1])
    _assert_same(_step(ours, batch), want)


def test_patch_before_peft_wraps_the_model_and_its_head():
    """patch(model), then get_peft_model puts LoRA on lm_head: the layer reads the LoRA head."""
    base = H.llama()
    ref = _lora(copy.deepcopy(base), ["v_proj", "lm_head"])
    ours = _lora(hf.patch(base), ["v_proj", "lm_head"])
    batch = _batch()
    _assert_same(_step(ours, batch), _step(ref, batch))


def test_lora_variants_on_the_head_are_refused():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["lm_head"], use_dora=True, task_type="CAUSAL_LM")
    model = peft.get_peft_model(H.llama(), config)
    with pytest.raises(ValueError, match="PEFT LoRA layer crossent cannot fuse: adapter 'default' is a LoRA variant"):
        hf.patch(model)


def test_disabled_adapter_is_the_base_model():
    model = _lora(H.llama(), ["q_proj", "lm_head"])
    ref = copy.deepcopy(model)
    hf.patch(model)
    batch = _batch()
    with model.disable_adapter(), ref.disable_adapter():
        for p in model.get_base_model().lm_head.base_layer.parameters():
            p.requires_grad_(True)  # (frozen by PEFT: a training forward needs something to train)
        out = model(**batch)
        want = ref(**batch)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want.loss, **TOL)


# ------------------------------------------------------------------ accelerate


@pytest.fixture
def accelerated():
    """accelerate's prepare_model with bf16 autocast. Its state is a process-wide singleton that
    an earlier Trainer (mixed_precision "no") may hold: reset before and after."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield lambda model: accelerate.Accelerator(cpu=True, mixed_precision="bf16").prepare_model(model)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_wrapper_after_patch_and_unpatch_under_it(accelerated):
    model = hf.patch(H.llama())
    model = accelerated(model)  # wraps model.forward (autocast, outputs to float32)
    wrapper = vars(model)["forward"]
    out = model(**_batch())
    assert out.logits is None and out.loss.dtype == torch.float32
    hf.unpatch(model)
    assert vars(model)["forward"] is wrapper and not hf.is_patched(model)
    out = model(**_batch())  # accelerate's wrapper still runs, crossent's layer is a pass-through
    assert out.logits is not None


def test_patch_after_accelerate_and_unpatch_restores_its_wrapper(accelerated):
    model = accelerated(H.llama())
    wrapper = vars(model)["forward"]
    ref = model(**_batch()).loss
    hf.patch(model)
    out = model(**_batch())
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref, rtol=2e-2, atol=0)  # both under bf16 autocast
    hf.unpatch(model)
    assert vars(model)["forward"] is wrapper


# ------------------------------------------------------------------ torch.compile


def test_patch_a_compiled_model_patches_its_module():
    ref = H.llama()
    compiled = torch.compile(copy.deepcopy(ref), backend="eager")
    batch = _batch()
    assert compiled(**batch).logits is not None  # compiled and run before patch: guards recompile
    hf.patch(compiled)
    assert hf.is_patched(compiled) and hf.is_patched(compiled._orig_mod)
    out, grads = _step(compiled, batch)
    grads = {n.removeprefix("_orig_mod."): g for n, g in grads.items()}
    _assert_same((out, grads), _step(ref, batch))
    hf.unpatch(compiled)
    assert compiled(**batch).logits is not None


# ------------------------------------------------------------------ layers


def test_two_unpatched_layers_peel_off_when_the_outer_wrapper_goes():
    """patch, a foreign wrapper, unpatch (inert), patch again: unpatch then leaves the foreign
    wrapper, and once it is removed the inert layer goes with the next unpatch's peel."""
    model = hf.patch(H.llama())
    inner = vars(model)["forward"]
    foreign = lambda *a, **k: inner(*a, **k)
    vars(model)["forward"] = foreign
    hf.unpatch(model)
    assert not hf.is_patched(model) and vars(model)["forward"] is foreign
    hf.patch(model)
    assert model(**_batch()).logits is None
    hf.unpatch(model)
    assert vars(model)["forward"] is foreign
    with pytest.raises(ValueError, match="is not patched"):
        hf.unpatch(model)
