"""Tiny TRL set-ups without downloads: a word-level tokenizer, pre-tokenized datasets, a Llama."""

from __future__ import annotations

import torch

VOCAB = 1000


def tokenizer(vocab: int = VOCAB):
    """A PreTrainedTokenizerFast over tokens "t0".."t{vocab-1}" (t0 pad, t1 bos, t2 eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", bos_token="t1",
                                   eos_token="t2", unk_token="t3")


def llama(vocab: int = VOCAB, hidden: int = 32, seed: int = 0, **extra):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra,
    )
    return transformers.LlamaForCausalLM(config).float().train()


def _words(g, n, vocab):
    return " ".join(f"t{i}" for i in torch.randint(4, vocab, (n,), generator=g).tolist())


def sft_dataset(rows: int = 8, seed: int = 3, vocab: int = VOCAB, length: int = 12):
    """Prompt/completion rows of different lengths (TRL masks the prompts), word-level text."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    prompts = [_words(g, 3 + i % 2, vocab) for i in range(rows)]
    completions = [" " + _words(g, length - 3 - i % 3, vocab) for i in range(rows)]
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def dpo_dataset(rows: int = 8, seed: int = 5, vocab: int = VOCAB):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({
        "prompt": [_words(g, 3 + i % 2, vocab) for i in range(rows)],
        "chosen": [" " + _words(g, 5 + i % 3, vocab) for i in range(rows)],
        "rejected": [" " + _words(g, 4 + i % 2, vocab) for i in range(rows)],
    })


def common_args(tmp_path, **kw):
    """TrainingArguments fields: float32 (TRL's configs default to bf16 autocast), no checkpoints,
    2 optimizer steps of 2 accumulated micro-batches of 2 rows; `kw` overrides."""
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=2,
                gradient_accumulation_steps=2, max_steps=2, logging_steps=1, learning_rate=1e-2,
                report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
                dataloader_num_workers=0, bf16=False)
    return {**base, **kw}


def count_calls(monkeypatch, module, name: str) -> dict:
    """Replace ``module.name`` (for this test) by a wrapper that counts its calls; returns the
    count, ``{"n": calls so far}``."""
    count = {"n": 0}
    real = getattr(module, name)

    def counted(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return count
