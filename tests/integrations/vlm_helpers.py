"""Tiny random vision-language models and a batch with an image for each (no downloads).

Each builder returns (model, batch): text vocabulary 300, hidden 32, one decoder layer or two,
a 1-2 layer vision tower; the batch holds image placeholder tokens where the model expects them,
the pixel inputs, and labels (-100 on the image tokens and on one row's prompt).
"""

from __future__ import annotations

import torch

VOCAB = 300
IMAGE = 299  # the image placeholder token of every model here


def _text(**extra):
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2, **extra)


def _ids(n_image: int, b: int = 2, text: int = 10, seed: int = 1, before: int = 2):
    """(B, before + n_image + text) ids: `before` text tokens, the image tokens, then text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, IMAGE - 10, (b, before + n_image + text), generator=g)
    ids[:, before:before + n_image] = IMAGE
    labels = ids.masked_fill(ids == IMAGE, -100)
    labels[1, : before + n_image + 3] = -100
    return ids, labels


def _pixels(*shape, seed=2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def llava():
    import transformers as t

    vision = t.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, image_size=16, patch_size=4, projection_dim=32)
    config = t.LlavaConfig(vision_config=vision, text_config=t.LlamaConfig(**_text()),
                           image_token_index=IMAGE, vision_feature_layer=-1, image_seq_length=16)
    model = t.LlavaForConditionalGeneration(config)
    ids, labels = _ids(16)  # (16/4)^2 patches, the CLS token dropped ("default" strategy)
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                       pixel_values=_pixels(2, 3, 16, 16))


def paligemma():
    import transformers as t

    vision = t.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, image_size=16, patch_size=4)
    text = t.GemmaConfig(**_text(head_dim=8))
    config = t.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE,
                               projection_dim=32, hidden_size=32, vocab_size=VOCAB)
    model = t.PaliGemmaForConditionalGeneration(config)
    ids, labels = _ids(16, before=0)  # the image comes first, then the prefix and suffix
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[:, 20:] = 1  # the suffix (trained) after a 4-token prefix
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                       token_type_ids=token_type_ids, pixel_values=_pixels(2, 3, 16, 16))


def gemma3():
    import transformers as t

    vision = t.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, image_size=16, patch_size=4)
    # final_logit_softcapping small enough to bite: the probe must see it
    text = t.Gemma3TextConfig(**_text(head_dim=8, final_logit_softcapping=0.5,
                                      query_pre_attn_scalar=8, sliding_window=16))
    config = t.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=4,
                            image_token_index=IMAGE, boi_token_index=297, eoi_token_index=298)
    model = t.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # the projection starts at 0: the image would not reach the text
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    ids, labels = _ids(4)
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                       token_type_ids=(ids == IMAGE).long(), pixel_values=_pixels(2, 3, 16, 16))


def _qwen_vl(config_cls, model_cls, vision: dict):
    import transformers as t  # noqa: F401

    text = _text(rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                  "rope_theta": 10000.0})
    config = config_cls(text_config=text, vision_config=vision, image_token_id=IMAGE,
                        video_token_id=298, vision_start_token_id=296, vision_end_token_id=297)
    model = model_cls(config)
    # one 8 x 8 image per row: a (1, 4, 4) grid of 2 x 2 patches, merged 2 x 2 -> 4 tokens
    ids, labels = _ids(4)
    ids[:, 1], ids[:, 6] = 296, 297  # vision start / end around the image tokens
    labels = labels.masked_fill((ids == 296) | (ids == 297), -100)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    pixels = _pixels(2 * 16, 3 * 2 * 2 * 2)  # (patches, C * temporal * patch * patch)
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                       pixel_values=pixels, image_grid_thw=grid,
                       mm_token_type_ids=(ids == IMAGE).int())  # 1: image (M-RoPE positions)


def qwen2_vl():
    import transformers as t

    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return _qwen_vl(t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration, vision)


def qwen2_5_vl():
    import transformers as t

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=8,
                  out_hidden_size=32, fullatt_block_indexes=[1])
    return _qwen_vl(t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration, vision)


def mllama():
    import transformers as t

    vision = t.MllamaVisionConfig(hidden_size=32, num_hidden_layers=2, num_global_layers=1,
                                  attention_heads=4, intermediate_size=64, vision_output_dim=64,
                                  image_size=16, patch_size=4, max_num_tiles=1,
                                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]])
    text = t.MllamaTextConfig(**{k: v for k, v in _text().items()}, cross_attention_layers=[1])
    config = t.MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE)
    model = t.MllamaForConditionalGeneration(config)
    with torch.no_grad():  # the cross-attention gates start at 0 (tanh 0): open them
        for name, p in model.named_parameters():
            if "cross_attn_attn_gate" in name or "cross_attn_mlp_gate" in name:
                p.fill_(0.5)
    ids, labels = _ids(1)  # one <|image|> token; the image enters through cross-attention
    cross = torch.ones(2, ids.shape[1], 1, 1, dtype=torch.long)  # (B, T, images, tiles)
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                       pixel_values=_pixels(2, 1, 1, 3, 16, 16),
                       aspect_ratio_ids=torch.ones(2, 1, dtype=torch.long),
                       aspect_ratio_mask=torch.ones(2, 1, 1, dtype=torch.long),
                       cross_attention_mask=cross)


FAMILIES = {"llava": ("LlavaForConditionalGeneration", llava),
            "paligemma": ("PaliGemmaForConditionalGeneration", paligemma),
            "gemma3": ("Gemma3ForConditionalGeneration", gemma3),
            "qwen2_vl": ("Qwen2VLForConditionalGeneration", qwen2_vl),
            "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", qwen2_5_vl),
            "mllama": ("MllamaForConditionalGeneration", mllama)}
