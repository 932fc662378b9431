"""Fine-tune a tiny random Llama with transformers' Trainer, with and without crossent.

    .venv/bin/pip install -e ".[hf]" accelerate      # Trainer needs accelerate
    .venv/bin/python examples/hf_trainer.py          # both runs, then the comparison
    .venv/bin/python examples/hf_trainer.py --steps 20 --vocab 65536 --seq 512

No download: the model is randomly initialised from a config, and the text is Python's own Zen
(``import this``), read as bytes (token id = byte value; the vocabulary is larger than 256 so that,
as in real models, the logits dominate memory). Each run is a fresh subprocess, so its peak memory
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set) is its own.
Both runs start from the same weights and see the same batches, so their losses agree to float
rounding; crossent's run never builds the (batch, seq, vocab) logits.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import resource
import subprocess
import sys
import time


def zen_bytes() -> list[int]:
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        import this
    return list(codecs.decode(this.s, "rot13").encode())


def train(mode: str, steps: int, vocab: int, seq: int, batch: int) -> dict:
    import torch
    import transformers

    from crossent.integrations import transformers as crossent_hf

    transformers.logging.set_verbosity_error()
    ids = zen_bytes()
    rows = [ids[i : i + seq] for i in range(0, len(ids) - seq, 16)]  # overlapping windows
    data = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows]

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq,
    )
    model = transformers.LlamaForCausalLM(config)
    if mode == "crossent":
        crossent_hf.patch(model)  # fused linear cross-entropy in training; unpatch() undoes it

    cuda = torch.cuda.is_available()
    args = transformers.TrainingArguments(
        output_dir="/tmp/crossent-example", max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=1, report_to=[],
        save_strategy="no", seed=0, use_cpu=not cuda, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if cuda:
        peak, where = torch.cuda.max_memory_allocated(), "cuda allocated"
    else:  # ru_maxrss is KiB on Linux
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu peak RSS"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return dict(mode=mode, losses=losses, peak_mib=peak / 2**20, memory=where, train_s=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mode", choices=["plain", "crossent"], help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.mode:  # one run, in this (fresh) process
        print(json.dumps(train(a.mode, a.steps, a.vocab, a.seq, a.batch)))
        return
    results = {}
    for mode in ("plain", "crossent"):
        cmd = [sys.executable, __file__, "--mode", mode, "--steps", str(a.steps),
               "--vocab", str(a.vocab), "--seq", str(a.seq), "--batch", str(a.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    plain, fused = results["plain"], results["crossent"]
    print(f"tiny Llama, vocab {a.vocab}, batch {a.batch} x seq {a.seq}, {a.steps} steps "
          f"(2 micro-batches each)")
    print(f"{'step':>4}  {'loss (transformers)':>20}  {'loss (crossent)':>16}")
    for i, (p, f) in enumerate(zip(plain["losses"], fused["losses"]), 1):
        print(f"{i:>4}  {p:>20.6f}  {f:>16.6f}")
    print(f"peak memory ({plain['memory']}): transformers {plain['peak_mib']:.0f} MiB, "
          f"crossent {fused['peak_mib']:.0f} MiB "
          f"(ratio {fused['peak_mib'] / plain['peak_mib']:.2f})")
    print(f"train time: transformers {plain['train_s']:.1f} s, crossent {fused['train_s']:.1f} s")


if __name__ == "__main__":
    main()
