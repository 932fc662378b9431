"""A GRPO policy that is a vision-language model (tiny random Qwen2-VL and LLaVA from vlm_helpers,
an image in every row): patch(GRPOTrainer) answers its fused-LM-head calls through crossent.

The trainer is the shell GRPOTrainer.__init__ leaves for patch: its models wrapped by TRL's own
``add_fused_lm_head`` exactly as GRPO wraps them (the policy with the sampling temperature and
outputs ("log_probs", "entropy"), the reference model with the temperature). Building a real
GRPOTrainer around a VLM needs a processor with an image processor and a chat template (a
download); what patch reads from the trainer is its models and ``compute_loss_func``, and the calls
are GRPO's own: ``model(**inputs, labels=labels, fused_lm_head=True)`` with the prompt's labels -100.
Oracle: the same models wrapped alike and unpatched (TRL's kernel): per-token log-probs and
entropies within 1e-5, and every parameter's gradient of a combined loss (policy-gradient term plus
an entropy bonus) equal, the vision tower's included.
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
try:
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head
except Exception as exc:  # a TRL too new or too old for this transformers
    pytest.skip(f"TRL {trl.__version__} has no usable GRPOTrainer here: {exc}", allow_module_level=True)
if int(transformers.__version__.split(".")[0]) < 5:  # the tiny configs use transformers 5's API
    pytest.skip("the VLM helpers are written for transformers >= 5", allow_module_level=True)
hf = pytest.importorskip("crossent.integrations.transformers")
import trl_helpers as H  # noqa: E402
import vlm_helpers as V  # noqa: E402

import crossent.functional  # noqa: E402

TEMPERATURE = 0.7


def _grpo(policy, ref):
    """The GRPOTrainer patch sees after GRPO's __init__ (see the module docstring)."""
    trainer = object.__new__(GRPOTrainer)
    trainer.model, trainer.ref_model, trainer.compute_loss_func = policy, ref, None
    return trainer


def _grpo_labels(batch):
    """GRPO scores the completion only: the prompt (here the image and the tokens before and just
    after it) -100, as `labels[:, :-logits_to_keep] = -100`."""
    ids = batch["input_ids"]
    labels = ids.masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, : ids.shape[1] - 6] = -100
    return labels


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_grpo_vlm_policy_equals_trls_fused_head(family, monkeypatch):
    class_name, build = V.FAMILIES[family]
    if not hasattr(transformers, class_name):
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    torch.manual_seed(0)
    model, batch = build()
    model = model.float().train()
    batch.pop("labels")
    labels = _grpo_labels(batch)
    twin, ref, ref_twin = copy.deepcopy(model), copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    for m in (model, twin):
        add_fused_lm_head(m, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    for m in (ref, ref_twin):
        add_fused_lm_head(m, temperature=TEMPERATURE)
    trainer = _grpo(model, ref)
    hf.patch(trainer)
    assert hf.is_patched(trainer)
    calls = H.count_calls(monkeypatch, crossent.functional, "linear_log_probs")
    g = torch.Generator().manual_seed(7)
    shape = (labels.shape[0], labels.shape[1] - 1)  # (TRL scores the shifted positions)
    adv, bonus = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    results = []
    for policy, reference in ((model, ref), (twin, ref_twin)):
        policy.zero_grad(set_to_none=True)
        out = policy(**batch, labels=labels, fused_lm_head=True)
        (-(adv * out.log_probs).sum() - 0.05 * (bonus * out.entropy).sum()).backward()
        with torch.no_grad():
            ref_lp = reference(**batch, labels=labels, fused_lm_head=True).log_probs
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results.append((out.log_probs.detach(), out.entropy.detach(), ref_lp, grads))
    assert calls["n"] == 2  # the patched policy and reference model; the twins run TRL's kernel
    (lp, ent, ref_lp, grads), (lp0, ent0, ref_lp0, grads0) = results
    assert (lp != 0).sum() > 0 and torch.equal(lp == 0, labels[:, 1:] == -100)
    for got, want, name in ((lp, lp0, "log_probs"), (ent, ent0, "entropy"), (ref_lp, ref_lp0, "ref log_probs")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert grads.keys() == grads0.keys()
    vision = [n for n in grads0 if ("vision" in n or "visual" in n) and grads0[n].abs().sum() > 0]
    assert vision, "the image must reach the log-probs (else this test could not see it dropped)"
    scale = max(g.abs().max().item() for g in grads0.values())
    for name in grads0:
        torch.testing.assert_close(grads[name], grads0[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")
