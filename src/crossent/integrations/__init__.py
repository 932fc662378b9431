"""Integrations with other libraries, each behind its own optional extra.

``crossent.integrations.transformers`` (extra ``crossent[hf]``): a drop-in for transformers'
causal-LM loss, and a generic ``patch`` / ``unpatch`` of ``*ForCausalLM`` models and decoder-only
VLMs (also under PEFT, torch.compile, ``Trainer`` and TRL's SFT / DPO trainers) that computes the
loss with ``crossent.linear_cross_entropy`` without building the logits. Importing this package
imports nothing else; the submodule imports transformers when it is itself imported.
"""
