"""Vision-language models through the generic patch, with an image in every row (tiny random
configs from vlm_helpers; no downloads). Oracle: the same model unpatched, transformers' loss."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("crossent.integrations.transformers")
if int(transformers.__version__.split(".")[0]) < 5:  # the tiny configs use transformers 5's API
    pytest.skip("the VLM tests are written for transformers >= 5 (README's table)",
                allow_module_level=True)
import vlm_helpers as V  # noqa: E402

import crossent  # noqa: E402


@pytest.fixture(autouse=True)
def _fused_path():
    with crossent.use_backend("fused"):
        yield


def _build(family):
    class_name, build = V.FAMILIES[family]
    if not hasattr(transformers, class_name):
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    torch.manual_seed(0)
    model, batch = build()
    return model.float().train(), batch


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", list(V.FAMILIES))
def test_patched_vlm_loss_and_gradients_equal_unpatched(family):
    model, batch = _build(family)
    ref, ref_grads = _grads(copy.deepcopy(model), batch)
    vision = [n for n in ref_grads if ("vision" in n or "visual" in n) and ref_grads[n].abs().sum() > 0]
    assert vision, "the image must reach the loss (else this test could not see it dropped)"
    hf.patch(model)
    out, grads = _grads(model, batch)
    assert out.logits is None and type(out) is type(ref)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    # Relative to the largest gradient: some are ~1e-9 (a key bias, mathematically zero) and
    # differ in their noise.
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")
    # and the pixels matter to the patched loss
    other = dict(batch, pixel_values=batch["pixel_values"] + 1.0)
    assert abs(model(**other).loss.item() - out.loss.item()) > 1e-6


def test_vlm_under_trls_fused_head_equals_trl():
    """A VLM wrapped by TRL's fused LM head, then patched: crossent's log-probs and metrics."""
    utils = pytest.importorskip("trl.trainer.utils")
    model, batch = _build("qwen2_vl")
    outputs = ("log_probs", "entropy", "is_top1", "mean_logits", "log_sum_sq_probs")
    ref_model = copy.deepcopy(model)
    utils.add_fused_lm_head(model, outputs=outputs)
    utils.add_fused_lm_head(ref_model, outputs=outputs)
    hf.patch(model)
    got = model(**batch, fused_lm_head=True)
    want = ref_model(**batch, fused_lm_head=True)
    for name in ("loss", "log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=2e-5, msg=name)
    assert torch.equal(got.is_top1, want.is_top1) and torch.equal(got.label_mask, want.label_mask)


def test_models_the_patch_cannot_handle_are_refused_at_patch_time():
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="decoder-only vision-language model .* got T5ForConditionalGeneration"):
        hf.patch(t5)
    if hasattr(transformers, "Blip2ForConditionalGeneration"):  # the head sits in language_model
        config = transformers.Blip2Config(
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, image_size=8, patch_size=4),
            qformer_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, encoder_hidden_size=16, vocab_size=64),
            text_config=transformers.OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               word_embed_proj_dim=16).to_dict(),
            num_query_tokens=2)
        with pytest.raises(ValueError, match="(failed on a probe input .*pixel_values|decoder-only vision-language)"):
            hf.patch(transformers.Blip2ForConditionalGeneration(config))
