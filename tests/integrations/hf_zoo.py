"""Every causal-LM class of the installed transformers, built tiny from its own config class.

``classes()`` lists what ``patch`` is offered by type: each ``*ForCausalLM`` transformers exports
and each class of its causal-LM auto mapping (``GPT2LMHeadModel``, ``Gemma3ForConditionalGeneration``
...). ``build(name)`` makes a random model with hidden size 32, 2 layers, 4 heads, a 64-wide MLP
and a vocabulary of ``VOCAB``: every config field with one of the common size names is set
(``SIZES``), sub-configs likewise, per-layer lists cut to the layer count, special token ids
moved inside the vocabulary, dropout kept (the twins draw the same masks); a few families need
more (``OVERRIDES``, each with why). A class that still cannot be built raises ``NotBuilt``
with transformers' reason.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import transformers
from transformers.configuration_utils import PreTrainedConfig

VOCAB = 128
LAYERS = 2
MAX_PARAMETERS = 20_000_000  # the largest tiny model here: ~16M (Gemma 4 Unified's audio tower)

SIZES = {
    # width: hidden 32 = 4 heads x 8
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "embed_dim", "model_dim",
                     "dim", "hidden_dim", "word_embed_proj_dim", "emb_dim"), 32),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers",
                     "num_decoder_layers", "encoder_layers"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads",
                     "decoder_attention_heads", "encoder_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"), 2),
    **dict.fromkeys(("head_dim", "kv_channels", "v_head_dim"), 8),
    "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "q_lora_rank": 16, "kv_lora_rank": 16,
    "rotary_dim": 4,  # GPT-J, CodeGen: rotary part of the 8-wide heads
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "encoder_ffn_dim",
                     "ffn_hidden_size", "d_ff", "d_inner"), 64),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size"), 16),
    **dict.fromkeys(("shared_expert_intermediate_size", "shared_experts_intermediate_size"), 32),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "moe_k"), 2),
    "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
    "vocab_size": VOCAB,
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 64),
    # state-space layers
    **dict.fromkeys(("state_size", "ssm_state_size", "mamba_d_state"), 8),
    "time_step_rank": 4, "conv_kernel": 4, "expand": 2,
    # linear attention (Kimi, Qwen3-Next, OLMo-Hybrid): 8-wide heads, not 128
    **dict.fromkeys(("linear_head_dim", "linear_key_head_dim", "linear_value_head_dim"), 8),
    **dict.fromkeys(("linear_num_heads", "linear_num_value_heads"), 4), "linear_num_key_heads": 2,
    # chunked scans and linear attention: chunks of the sweep's 8 tokens, not of 64-256 (padding)
    **dict.fromkeys(("chunk_size", "mamba_chunk_size", "ssm_chunk_size"), 8),
    # Gemma 3n / 4: per-layer input embeddings of the vocabulary, not of 262144 tokens x 256
    "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 8,
    # vision / audio towers of the mapping's multimodal classes (never run: text-only inputs)
    "image_size": 32, "patch_size": 8, "num_mel_bins": 16, "mlp_dim": 64, "hidden_size_global": 32,
}
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}

# model_type -> extra config fields, where the generic sizes are not a valid architecture
OVERRIDES: dict[str, dict] = {
    # Mamba-2 style mixers: heads x head size must equal expand x hidden (2 x 32)
    "bamba": dict(mamba_n_heads=8, mamba_d_head=8, attn_layer_indices=[1]),
    "mamba2": dict(num_heads=8, head_dim=8, n_groups=1),
    # GPT-Neo: one (global, local) pair of attention layers
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "granitemoehybrid": dict(mamba_n_heads=8, mamba_d_head=8, layer_types=["mamba", "attention"]),
    "gemma4_assistant": dict(text_config=dict(hidden_size_per_layer_input=0, vocab_size_per_layer_input=0),
                             backbone_hidden_size=32),
    "gemma3n_text": dict(num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"]),
    # (its default config has no RoPE parameters per layer type, which its model reads)
    "cohere_compass_text": dict(layer_types=["sliding_attention", "full_attention"], rope_parameters={
        t: {"rope_type": "default", "rope_theta": 10000.0} for t in ("sliding_attention", "full_attention")}),
    "dbrx": dict(attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                 ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}),
    "dots3_note_text": dict(num_key_value_heads=4),
    "kolibri1_1": dict(head_dim=16, kv_source_layers=[0, 1], index_num_heads=2, index_topk=8,
                       index_pool_size=64),  # NVFP4 K/V rounding: blocks of 16
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),  # (its cache needs one)
    "zaya": dict(num_experts_per_tok=1),  # "currently supports num_experts_per_tok=1 only"
    # multi-head latent attention with an indexer: as many key/value heads as query heads
    **dict.fromkeys(("axk2", "deepseek_v32", "glm_moe_dsa"), dict(num_key_value_heads=4)),
    "longcat_flash": dict(head_dim=4),  # its rotary dim is qk_rope_head_dim (4 here)
    # its default layers include indexed attention, whose indexer sizes default to None
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8,
                           indexer_budget=8, indexer_compress_ratio=2),
    "blt": dict(encoder_hash_byte_group_vocab=64),  # else a 500002-row hash embedding
    # Reformer: a decoder of two local-attention layers, plain position embeddings; no dropout
    # (its reversible layers seed their dropout from torch.seed(), the OS, not the seeded RNG)
    "reformer": dict(is_decoder=True, attn_layers=["local", "local"], axial_pos_embds=False,
                     local_attn_chunk_length=4, attention_head_size=8, feed_forward_size=64,
                     hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
                     lsh_attention_probs_dropout_prob=0.0),
}


# model_type -> what a model needs before its first forward
SETUP = {"xmod": lambda model: model.set_default_language("en_XX")}


class NotBuilt(Exception):
    """The class could not be built from a tiny config (transformers' own reason)."""


def classes() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = {n for n in dir(transformers) if n.endswith("ForCausalLM") and not n.startswith("Auto")}
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return sorted(names)


def _fields(config_class: type) -> set[str]:
    """The config's fields: dataclass fields (transformers 5), else its __init__'s parameters."""
    try:
        return {f.name for f in dataclasses.fields(config_class)}
    except TypeError:  # not a dataclass (transformers 4)
        return set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}


def _spec_class(spec) -> type | None:
    """The config class a sub-config spec makes by default (an AutoConfig spec: its model type's)."""
    config_class = getattr(spec, "config_class", None)
    if isinstance(config_class, type) and issubclass(config_class, PreTrainedConfig):
        return config_class
    model_type = getattr(spec, "model_type", None)
    return spec.get_config_class(model_type) if model_type else None


def tiny_kwargs(config_class: type, default: PreTrainedConfig | None = None, *,
                vocab: int = VOCAB, top: bool = True) -> dict:
    """The config fields to set: sizes, token ids, sub-configs, per-layer lists, overrides."""
    fields = _fields(config_class)
    kwargs = {k: v for k, v in SIZES.items() if k in fields}
    for name in ("vocab_size", "vocab_size_per_layer_input"):
        if name in fields:
            kwargs[name] = vocab
    kwargs.update({k: TOKENS.get(k, 3) for k in fields if k.endswith("_token_id") and k in TOKENS})
    if "is_decoder" in fields and top:  # BERT-style LM heads: causal attention
        kwargs["is_decoder"] = True
    if default is None:
        try:
            default = config_class()
        except Exception:  # noqa: BLE001 - a config without defaults: the generic fields only
            default = None
    # (vars, not getattr: configs with per-layer fields refuse a global read of them)
    values = vars(default) if default is not None else {}
    layers = None
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        layers = layers or values.get(name)
    specs = getattr(config_class, "sub_configs_defaults", {})
    for name in fields:
        value = values.get(name)
        sub_class = type(value) if isinstance(value, PreTrainedConfig) else _spec_class(specs.get(name))
        if sub_class is not None:  # a sub-config: tiny too, of its default type
            kwargs[name] = tiny_kwargs(sub_class, value if isinstance(value, PreTrainedConfig) else None,
                                       vocab=vocab, top=False)
            spec_class = getattr(specs.get(name), "config_class", None)
            if not (isinstance(spec_class, type) and issubclass(spec_class, PreTrainedConfig)):
                kwargs[name]["model_type"] = sub_class.model_type  # an AutoConfig spec resolves it
        elif isinstance(value, (list, tuple)) and layers and len(value) == layers and name not in kwargs:
            # per-layer lists (layer_types, ...): the first and the last layer's, to keep both kinds
            kwargs[name] = type(value)(list(value[: LAYERS - 1]) + list(value[-1:]))
    for name, value in OVERRIDES.get(getattr(config_class, "model_type", ""), {}).items():
        if isinstance(value, dict) and isinstance(kwargs.get(name), dict):
            kwargs[name] = {**kwargs[name], **value}  # a sub-config's fields
        else:
            kwargs[name] = value
    return kwargs


def build(name: str, *, seed: int = 0, vocab: int = VOCAB, **config) -> torch.nn.Module:
    """A tiny random float32 model of the named class, in training mode (config: more fields)."""
    model_class = getattr(transformers, name)
    config_class = model_class.config_class
    try:
        config = config_class(**{**tiny_kwargs(config_class, vocab=vocab), **config})
        torch.manual_seed(seed)
        model = model_class(config)
    except Exception as exc:  # noqa: BLE001 - any reason: reported per class
        raise NotBuilt(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}") from exc
    size = sum(p.numel() for p in model.parameters())
    if size > MAX_PARAMETERS:  # a config field the sizes above missed: too slow for the sweep
        raise NotBuilt(f"{size} parameters, above the sweep's {MAX_PARAMETERS}")
    SETUP.get(config.model_type, lambda model: None)(model)
    return model.float().train()
