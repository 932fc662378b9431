"""One SFTTrainer run in this fresh process; prints the peak RSS of its second optimizer step
over that step's start, in bytes (argv[1]: "patched" or "unpatched"; argv[2]: vocabulary size)."""

from __future__ import annotations

import json
import sys
import tempfile

import torch
import transformers
import trl

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import trl_helpers as H  # noqa: E402

import crossent  # noqa: E402
import crossent.integrations.transformers as hf  # noqa: E402


def kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Peak(transformers.TrainerCallback):
    """Resets the peak (VmHWM) at the start of each step and records the rise at its end."""

    def __init__(self):
        self.rise = []

    def on_step_begin(self, args, state, control, **kwargs):
        crossent.empty_cache()  # buffers kept from the last step are this step's memory too
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        self.start = kb("VmRSS")

    def on_step_end(self, args, state, control, **kwargs):
        self.rise.append((kb("VmHWM") - self.start) * 1024)


def main() -> None:
    case, vocab = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = H.llama(vocab=vocab, hidden=32)
    peak = Peak()
    with tempfile.TemporaryDirectory() as out:
        args = trl.SFTConfig(**H.common_args(out, per_device_train_batch_size=2,
                                             gradient_accumulation_steps=1, max_steps=2,
                                             gradient_checkpointing=False),
                             max_length=256)
        data = H.sft_dataset(rows=4, vocab=vocab, length=256)
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data,
                                 processing_class=H.tokenizer(vocab), callbacks=[peak])
        if case == "patched":
            hf.patch(trainer)
        trainer.train()
    # step 1 allocates the optimizer state and gradients; step 2 is the steady state
    print(json.dumps({"extra_bytes": max(peak.rise[1:])}))


if __name__ == "__main__":
    main()
