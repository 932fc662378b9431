"""What ``patch``'s probe costs, beside a training step and beside reading the forward's source.

``python tests/integrations/probe_cost.py [threads]`` prints one JSON line per Llama size (small:
hidden 256, 4 layers; medium: hidden 1024, 8 layers; vocabulary 32000): the wall time of
``patch(model)`` (the probe's forwards of 8 tokens, without gradient, and the snapshot of the
model's state; each run patches the model and unpatches it after the clock stops: the process's
first, and the median of 3 more), of one training step (forward with labels and backward,
2 x 256 tokens, unpatched), and of the alternative the probe replaces -- reading the class's
forward source and parsing it (``inspect.getsource`` + ``ast.parse``) -- and the peak RSS above
the model's during the first ``patch`` (Linux: VmHWM reset through /proc/self/clear_refs). Median
of 3 runs, one process, float32, CPU. Not a test: timings are measured, not asserted.
"""

from __future__ import annotations

import ast
import inspect
import json
import statistics
import sys
import time
import warnings

import torch
import transformers

from crossent.integrations import transformers as hf

SIZES = [  # (hidden, layers, heads, vocabulary)
    (256, 4, 4, 32000),
    (1024, 8, 16, 32000),
]


def _median_seconds(fn, runs=3):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_rss_above_now_mb(fn) -> float:
    """Peak resident set size while fn runs, above the resident size before it (MiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    before = _status_kb("VmRSS")
    fn()
    return round((_status_kb("VmHWM") - before) / 1024, 1)


def measure(hidden, layers, heads, vocab):
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 4 or 1, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).train()
    ids = torch.randint(3, vocab, (2, 256))

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    def patch():
        start = time.perf_counter()
        hf.patch(model)
        seconds = time.perf_counter() - start
        hf.unpatch(model)
        return seconds

    def read_source():
        ast.parse(inspect.getsource(type(model).forward).strip().replace("\n    ", "\n"))

    first = []  # the process's first patch (imports, first calls) and its memory, then warm ones
    patch_rss_mb = _peak_rss_above_now_mb(lambda: first.append(patch()))  # (no gradients yet)
    patch_s = statistics.median(patch() for _ in range(3))
    return dict(hidden=hidden, layers=layers, vocab=vocab,
                parameters=sum(p.numel() for p in model.parameters()),
                first_patch_s=round(first[0], 4), patch_s=round(patch_s, 4),
                train_step_s=round(_median_seconds(step, runs=2), 3),
                read_source_s=round(_median_seconds(read_source), 5), patch_rss_mb=patch_rss_mb,
                threads=torch.get_num_threads())


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    for size in SIZES:
        print(json.dumps(measure(*size)), flush=True)
