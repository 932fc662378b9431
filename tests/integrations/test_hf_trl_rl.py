"""crossent under TRL's GRPOTrainer, RLOOTrainer and KTOTrainer (tiny random Llama saved to disk,
word-level tokenizer; no downloads; float32, generation on the CPU).

Oracle: the same trainer unpatched (TRL's own fused LM head). The per-token log-probs and
entropies of the trainer's own method, and the gradients of a combined loss of them, equal TRL's
within 1e-5; two optimizer steps of each trainer run with crossent.linear_log_probs called, with
every parameter's gradient equal to TRL's at both steps (within GRAD_RTOL of its norm: float32
noise, measured against a float64 run), over GRPO's loss types, sequence-level
importance sampling, a reference model (beta > 0), the entropy bonus, entropy masking
(top_entropy_quantile < 1), a sampling temperature, a float32 head and LoRA on lm_head.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
try:  # TRL imports lazily: a TRL too new for the transformers in use fails here
    from trl import GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, RLOOConfig, RLOOTrainer  # noqa: F401
except Exception as exc:  # (RuntimeError from transformers' lazy import, ImportError, ...)
    pytest.skip(f"TRL {trl.__version__} has no GRPO/RLOO/KTO trainers usable here: {exc}", allow_module_level=True)
hf = pytest.importorskip("crossent.integrations.transformers")
import trl_helpers as H  # noqa: E402
from test_hf_trl import _fused_path, _Grads  # noqa: E402, F401  (autouse fixture)

import crossent  # noqa: E402
import crossent.functional  # noqa: E402
from crossent.integrations.transformers import _trl, _trl_rl  # noqa: E402

if _trl.version()[:2] < _trl.MIN_VERSION:  # (refused there: test_rl_trainers_refused_on_an_older_trl)
    pytest.skip(f"GRPO/RLOO/KTO call TRL's fused LM head from TRL {_trl.MIN_VERSION} on", allow_module_level=True)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of crossent.functional.linear_log_probs (what the RL patch calls)."""
    return H.count_calls(monkeypatch, crossent.functional, "linear_log_probs")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The policy on disk: GRPO/KTO load the reference model from the policy's name."""
    path = tmp_path_factory.mktemp("llama")
    H.llama().save_pretrained(path)
    H.tokenizer().save_pretrained(path)
    return str(path)


def _reward(completions, **kwargs):
    return [float(sum(int(w[1:]) for w in c.split() if w[1:].isdigit()) % 13) for c in completions]


def _prompts(rows=8, seed=1):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"prompt": [H._words(g, 3 + i % 2, H.VOCAB) for i in range(rows)]})


def _rl(kind, path, model_path, *, patch, peft_config=None, **config):
    grads = _Grads()
    common = H.common_args(path, max_grad_norm=0.0, per_device_train_batch_size=4)
    config.setdefault("model_init_kwargs", {"dtype": torch.float32})
    if kind == "kto":
        args = trl.KTOConfig(**common, max_length=32, **config)
        trainer = trl.KTOTrainer(model=model_path, args=args, train_dataset=_kto_dataset(),
                                 processing_class=H.tokenizer(), callbacks=[grads], peft_config=peft_config)
    else:
        cls, cfg = (trl.GRPOTrainer, trl.GRPOConfig) if kind == "grpo" else (trl.RLOOTrainer, trl.RLOOConfig)
        args = cfg(**common, num_generations=2, max_completion_length=6, **config)
        trainer = cls(model=model_path, reward_funcs=_reward, args=args, train_dataset=_prompts(),
                      processing_class=H.tokenizer(), callbacks=[grads], peft_config=peft_config)
    if patch:
        hf.patch(trainer)
    return trainer, grads


def _kto_dataset(rows=8, seed=5):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({
        "prompt": [H._words(g, 3 + i % 2, H.VOCAB) for i in range(rows)],
        "completion": [" " + H._words(g, 4 + i % 3, H.VOCAB) for i in range(rows)],
        "label": [i % 2 == 0 for i in range(rows)],
    })


# Gradients of two optimizer steps, patched vs TRL's own run: per parameter and step, ||g_crossent -
# g_TRL|| <= GRAD_RTOL * ||g_TRL|| (Frobenius norms). Not elementwise: both runs are float32 and sum
# in different orders, and the second step's gradient carries each run's own noise:
# num_iterations=1, so each sequence's gradient is scaled by exp(logps - old_logps), 1 in exact
# arithmetic, whose float32 value (the training call's log-probs minus the generation call's) was up
# to 3.8e-6 in TRL's run and 7.6e-6 in crossent's at step 2 (RLOO, seed 0). Measured against a
# float64 run of the same steps (same seeds; the model in float64, TRL's fused head computed by a
# float64 log_softmax + gather + entropy composition), RLOO as below, TRL 1.15.0 (model seeds 0-3)
# and 1.16.0 (seed 0): TRL's own float32 gradients are up to 1.3e-6 (step 1) and 4.0e-6 (step 2) of
# the norm from the float64 ones per parameter, crossent's up to 1.4e-6 and 5.8e-6, crossent - TRL
# up to 4.3e-7 and 4.5e-6 (seed 2's step 2: both float32 runs 4.4e-3 from the float64 one, a
# discrete divergence of the float64 run, and 4.4e-6 from each other); elementwise, TRL's own step-2
# o_proj gradient was 1.5e-5 from the float64 one, beyond the former atol of 1e-5 (what failed on
# TRL 1.15). On the head's own inputs of those steps crossent's kernel is as close to float64 as
# TRL's (grad_x 2.0-2.9e-7 vs 2.2-2.9e-7 of the norm). Outputs scaled by (1 + 1e-4) move every
# gradient by ~1e-4 of its norm: 5x this tolerance. (The distances: trl_rl_float64.py.)
GRAD_RTOL = 2e-5


def _assert_same_gradients(got, want, rtol=GRAD_RTOL):
    assert len(got.steps) == len(want.steps) == 2
    for step, (g, w) in enumerate(zip(got.steps, want.steps)):
        assert g.keys() == w.keys()
        for name in w:
            err, norm = (g[name].double() - w[name].double()).norm().item(), w[name].double().norm().item()
            assert err <= rtol * norm, f"step {step + 1}, {name}: ||crossent - TRL|| {err:.3e} > {rtol} * {norm:.3e}"


def _train_both(tmp_path, kind, model_path, calls, **config):
    ref, ref_grads = _rl(kind, tmp_path / "ref", model_path, patch=False, **config)
    ref.train()
    assert calls["n"] == 0  # TRL's own fused head: crossent never runs unpatched
    trainer, grads = _rl(kind, tmp_path / "patched", model_path, patch=True, **config)
    assert hf.is_patched(trainer)
    trainer.train()
    assert calls["n"] >= 2  # at least the policy's call at each step
    _assert_same_gradients(grads, ref_grads)
    logs = [[{k: v for k, v in h.items() if k in ("loss", "entropy", "kl", "policy_loss")}
             for h in t.state.log_history if "loss" in h] for t in (trainer, ref)]
    assert len(logs[0]) == len(logs[1]) == 2
    for got, want in zip(*logs):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (key, got, want)


GRPO_CASES = {
    "grpo-beta-temperature": dict(loss_type="grpo", beta=0.1, temperature=0.7),
    "bnpo-entropy-bonus": dict(loss_type="bnpo", entropy_coef=0.05),
    "dr_grpo-entropy-mask": dict(loss_type="dr_grpo", top_entropy_quantile=0.5, entropy_coef=0.05),
    "dapo-fp32-head": dict(loss_type="dapo", cast_lm_head_to_fp32=True, temperature=1.3),
    "cispo": dict(loss_type="cispo", num_iterations=2),
    "sequence-importance-sampling": dict(loss_type="grpo", importance_sampling_level="sequence", beta=0.05),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(GRPO_CASES.values()), ids=list(GRPO_CASES))
def test_grpo_trains_like_trl(tmp_path, model_path, calls, config):
    _train_both(tmp_path, "grpo", model_path, calls, **config)


@pytest.mark.slow
def test_rloo_trains_like_trl(tmp_path, model_path, calls):
    _train_both(tmp_path, "rloo", model_path, calls, beta=0.1, temperature=0.8)


@pytest.mark.slow
def test_kto_trains_like_trl(tmp_path, model_path, calls):
    _train_both(tmp_path, "kto", model_path, calls)


def _per_token(trainer, ids, mask, keep):
    lp, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, compute_entropy=True)
    return lp, ent


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_per_token_log_probs_and_entropy_equal_trls(tmp_path, model_path, calls, lora):
    """The trainer's own method, patched vs an unpatched twin: values within 1e-5 and the
    gradients of a combined loss (random weights on both outputs) on every parameter (float32
    rounding through two layers: rtol 1e-4, atol 1e-5), also under
    PEFT (LoRA on the attention; TRL 1.16's GRPOTrainer itself refuses an adapter on lm_head)."""
    peft_config = None
    if lora:
        peft = pytest.importorskip("peft")
        peft_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                      init_lora_weights=False)
    made = [_rl("grpo", tmp_path / str(p), model_path, patch=p, peft_config=peft_config, temperature=0.7)[0]
            for p in (False, True)]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, H.VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    a, c = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    out = []
    for trainer in made:
        trainer.model.zero_grad()
        lp, ent = _per_token(trainer, ids, mask, 5)
        (lp * a + ent * c).sum().backward()
        out.append((lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                                 if p.grad is not None}))
    assert calls["n"] == 1
    (lp0, ent0, g0), (lp1, ent1, g1) = out
    torch.testing.assert_close(lp1, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent1, ent0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and any(("lora" if lora else "lm_head") in n for n in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_patch_refusals(tmp_path, model_path):
    trainer, _ = _rl("grpo", tmp_path / "a", model_path, patch=False)
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: outputs.loss
    with pytest.raises(ValueError, match="GRPOTrainer with compute_loss_func .* is not supported"):
        hf.patch(trainer)
    assert not hf.is_patched(trainer)
    # a wrapper asking for a statistic _stats computes at temperature 1 only, at temperature 0.7
    trainer, _ = _rl("grpo", tmp_path / "b", model_path, patch=False, temperature=0.7)
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(trainer.model, temperature=0.7, outputs=("log_probs", "log_sum_sq_probs"))
    with pytest.raises(ValueError, match=r"temperature=0.7 and the outputs \['log_sum_sq_probs'\] is not supported"):
        hf.patch(trainer)
    assert not hf.is_patched(trainer)


def test_readme_lists_the_rl_trainers():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| trl |")]
    assert set(_trl_rl.TRAINERS) <= set(re.findall(r"\w+Trainer", row))


@pytest.mark.parametrize("name", _trl_rl.TRAINERS)
def test_rl_trainers_refused_on_an_older_trl(name, monkeypatch):
    """TRL < 1.15 has no fused LM head (its trainers compute the logits): patch(trainer) refuses,
    naming the installed TRL and the tested ones, and leaves the trainer unpatched; from 1.15 on
    (where GRPO, RLOO and KTO already call the fused head: this file passes on 1.15.0 and 1.16.0)
    the same trainer is patched. The trainer is the shell its __init__ leaves for patch (the
    models wrapped by TRL's add_fused_lm_head), which patch reads before anything else."""
    from trl.trainer.utils import add_fused_lm_head

    model = H.llama()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    trainer = object.__new__(getattr(trl, name))
    trainer.model, trainer.ref_model, trainer.compute_loss_func = model, None, None
    monkeypatch.setattr(trl, "__version__", "1.14.2")
    with pytest.raises(ValueError, match=r"TRL 1\.14\.2 is not supported \(it has no fused LM head API\): "
                                         r"crossent patches TRL's trainers from TRL 1\.15 on "
                                         r"\(tested: TRL 1\.15\.0, 1\.16\.0\)"):
        hf.patch(trainer)
    assert not hf.is_patched(trainer)
    monkeypatch.setattr(trl, "__version__", "1.15.0")
    hf.patch(trainer)
    assert hf.is_patched(trainer)
