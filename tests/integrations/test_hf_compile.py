"""A patched tiny Llama's training step under torch.compile(fullgraph=True): no graph break, and
the loss and every parameter gradient of eager transformers. Before torch 2.13, Dynamo cannot
trace the swap of the head's forward (a module's __dict__ item set and deleted): the step compiles
with graph breaks there, and the values are checked the same."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from crossent import _torch_version  # noqa: E402
from crossent.integrations import transformers as crossent_hf  # noqa: E402

pytestmark = pytest.mark.slow
FULLGRAPH = _torch_version.TORCH >= (2, 13)  # (2.11 tested: "__delitem__" unsupported; 2.13: none)


def test_patched_training_step_compiles_without_graph_breaks():
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    plain = transformers.LlamaForCausalLM(config).train()
    patched = crossent_hf.patch(copy.deepcopy(plain))
    ids = torch.randint(0, 128, (2, 16))

    forward = lambda model: model(input_ids=ids, labels=ids).loss
    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(patched)
    assert (explained.graph_break_count == 0) == FULLGRAPH, explained.break_reasons
    torch._dynamo.reset()
    ours = torch.compile(forward, fullgraph=FULLGRAPH, backend="aot_eager")(patched)
    theirs = forward(plain)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(patched.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
