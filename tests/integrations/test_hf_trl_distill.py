"""crossent under TRL's DistillationTrainer (tiny random Llamas, a wider teacher; word-level
tokenizer; no downloads; float32, on-policy generation on the CPU).

Oracle: the same trainer unpatched (TRL's own chunked generalized JSD). Two optimizer steps of 2
accumulated micro-batches with crossent.linear_distillation_loss called, every parameter's gradient
and the logged loss and entropy equal to TRL's at both steps, over beta (forward KL, JSD, reverse
KL), a temperature, a student softcap and logit scale; and the refusals.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
try:
    from trl import DistillationConfig, DistillationTrainer  # noqa: F401
except Exception as exc:
    pytest.skip(f"TRL {trl.__version__} has no DistillationTrainer usable here: {exc}", allow_module_level=True)
hf = pytest.importorskip("crossent.integrations.transformers")
import trl_helpers as H  # noqa: E402
from test_hf_trl import _assert_same_steps, _fused_path, _Grads  # noqa: E402, F401  (autouse fixture)

import crossent  # noqa: E402
import crossent.functional  # noqa: E402
from crossent._checks.integrations import Unsupported  # noqa: E402
from crossent.integrations.transformers import _trl  # noqa: E402

if _trl.version()[:2] < (1, 16):
    pytest.skip("DistillationTrainer's chunked divergence appears in TRL 1.16", allow_module_level=True)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of crossent.functional.linear_distillation_loss (what the patch calls)."""
    return H.count_calls(monkeypatch, crossent.functional, "linear_distillation_loss")


def _prompts(rows=8, seed=1):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"prompt": [H._words(g, 3 + i % 2, H.VOCAB) for i in range(rows)]})


def _trainer(path, *, patch, student_extra=None, teacher_extra=None, **config):
    grads = _Grads()
    args = trl.DistillationConfig(**H.common_args(path, max_grad_norm=0.0, per_device_train_batch_size=4),
                                  max_completion_length=6, **config)
    trainer = trl.DistillationTrainer(
        model=H.llama(**(student_extra or {})), teacher_model=H.llama(hidden=48, seed=1, **(teacher_extra or {})),
        args=args, train_dataset=_prompts(), processing_class=H.tokenizer(), callbacks=[grads])
    if patch:
        hf.patch(trainer)
    return trainer, grads


CASES = {
    "reverse-KL": dict(beta=1.0),
    "forward-KL-temperature": dict(beta=0.0, temperature=1.5),
    "JSD": dict(beta=0.5),
    "JSD-student-softcap-and-scale": dict(beta=0.3, student_extra=dict(logit_scale=0.5)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_distillation_trainer_trains_like_trl(tmp_path, calls, case):
    case = dict(case)
    ref, ref_grads = _trainer(tmp_path / "ref", patch=False, **case)
    ref.train()
    assert calls["n"] == 0
    trainer, grads = _trainer(tmp_path / "patched", patch=True, **case)
    assert hf.is_patched(trainer)
    trainer.train()
    assert calls["n"] >= 4  # every micro-batch of both steps
    _assert_same_steps(grads, ref_grads, rtol=1e-4, atol=1e-5)
    logs = [[{k: h[k] for k in ("loss", "entropy")} for h in t.state.log_history if "loss" in h] for t in (trainer, ref)]
    assert len(logs[0]) == len(logs[1]) == 2
    for got, want in zip(*logs):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (key, got, want)
    hf.unpatch(trainer)
    assert not hf.is_patched(trainer)


def test_the_seam_equals_trls_function(calls):
    """crossent's _chunked_divergence_loss against TRL's on random hidden states: a mask, biases,
    different widths, logit scales, softcaps, a temperature, num_items_in_batch; loss, entropy sum,
    count and the student's gradients."""
    from trl.trainer.distillation_trainer import _chunked_divergence_loss as trl_loss

    from crossent.integrations.transformers._trl_distill import divergence_loss

    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    ws, wt = torch.randn(300, 16, generator=g) / 4, torch.randn(300, 24, generator=g) / 4
    bs, bt = torch.randn(300, generator=g), torch.randn(300, generator=g)
    mask = (torch.rand(2, 7, generator=g) > 0.3).long()
    for beta, kw in ((0.0, {}), (1.0, dict(temperature=2.0)), (0.4, dict(
            student_logit_scale=0.7, teacher_logit_scale=1.3, student_final_logit_softcapping=3.0,
            teacher_final_logit_softcapping=5.0, temperature=0.8, num_items_in_batch=torch.tensor(11.0)))):
        out = []
        for f in (trl_loss, divergence_loss):
            x, w, b = (t.clone().requires_grad_() for t in (hs, ws, bs))
            loss, entropy, n = f(x, ht, w, wt, mask, beta, student_lm_head_bias=b, teacher_lm_head_bias=bt, **kw)
            out.append((loss.detach(), entropy, n, *torch.autograd.grad(loss, (x, w, b))))
        for a, e in zip(*out[::-1]):
            torch.testing.assert_close(a.float() if a.is_floating_point() else a, e, rtol=1e-4, atol=1e-6)
    assert calls["n"] == 3


def test_refusals(tmp_path):
    trainer, _ = _trainer(tmp_path, patch=False)
    trainer.teacher_model = None
    with pytest.raises(Unsupported, match="teacher_model"):
        hf.patch(trainer)
    trainer, _ = _trainer(tmp_path, patch=True)
    with pytest.raises(Unsupported, match="already"):
        hf.patch(trainer)
    hf.unpatch(trainer)
    with pytest.raises(Unsupported, match="no crossent patch"):
        hf.unpatch(trainer)

    class OwnLoss(trl.DistillationTrainer):
        def _compute_loss(self, *args, **kwargs):
            return super()._compute_loss(*args, **kwargs)

    trainer.__class__ = OwnLoss
    with pytest.raises(Unsupported, match="_compute_loss"):
        hf.patch(trainer)


def test_gkd_trainer_is_refused_not_silently_ignored(tmp_path):
    """GKDTrainer is an SFTTrainer whose loss is computed on both models' full logits: patching
    its fused LM head would not change the loss, so patch refuses it."""
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except Exception as exc:  # pragma: no cover - depends on TRL
        pytest.skip(f"no GKDTrainer: {exc}")
    args = GKDConfig(**H.common_args(tmp_path), max_length=32)
    trainer = GKDTrainer(model=H.llama(), teacher_model=H.llama(seed=1), args=args,
                         train_dataset=H.sft_dataset().map(lambda r: {"messages": [
                             {"role": "user", "content": r["prompt"]},
                             {"role": "assistant", "content": r["completion"]}]}, remove_columns=["prompt", "completion"]),
                         processing_class=H.tokenizer())
    with pytest.raises(Unsupported, match="GKD"):
        hf.patch(trainer)


def _batch(seed=2, rows=3, prompt=4, completion=5):
    """The tensors DistillationTrainer.compute_loss takes (after its generation step): prompt and
    completion ids and masks, some completion tokens masked."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rows, completion, generator=g) > 0.3).long()
    mask[:, 0] = 1
    return {"prompt_ids": torch.randint(4, H.VOCAB, (rows, prompt), generator=g),
            "prompt_mask": torch.ones(rows, prompt, dtype=torch.long),
            "completion_ids": torch.randint(4, H.VOCAB, (rows, completion), generator=g),
            "completion_mask": mask}


def test_the_seam_is_per_trainer_across_threads(tmp_path, calls, monkeypatch):
    """A patched and an unpatched DistillationTrainer computing their losses at the same moment in two
    threads: the unpatched one's loss runs while the patched one's call is inside crossent's, and
    each gets its own path (the calls counted by thread), with the losses and gradients of the two
    run alone."""
    import threading

    from trl.trainer import distillation_trainer as module

    from crossent.integrations.transformers import _trl_distill

    patched, _ = _trainer(tmp_path / "a", patch=True, beta=0.5)
    plain, _ = _trainer(tmp_path / "b", patch=False, beta=0.5)
    router = getattr(module, "_chunked_divergence_loss")
    assert isinstance(router, _trl_distill.Router)
    inputs = _batch()

    def run(trainer):
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]

    alone = {id(t): run(t) for t in (patched, plain)}  # (sequential: each its own path)
    assert calls["n"] == 1
    who = {"crossent": [], "trl": []}
    a_inside, b_inside = threading.Event(), threading.Event()
    real_crossent, real_trl = crossent.functional.linear_distillation_loss, router.original

    def crossent_side(*args, **kwargs):
        who["crossent"].append(threading.current_thread().name)
        if threading.current_thread().name == "patched":
            a_inside.set()
            assert b_inside.wait(60), "the other trainer's loss never ran while this one was inside crossent"
        else:  # (the unpatched trainer sent to crossent: the bug this test is for)
            b_inside.set()
        return real_crossent(*args, **kwargs)

    def trl_side(*args, **kwargs):
        who["trl"].append(threading.current_thread().name)
        b_inside.set()
        return real_trl(*args, **kwargs)

    monkeypatch.setattr(crossent.functional, "linear_distillation_loss", crossent_side)
    monkeypatch.setattr(router, "original", trl_side)
    results, errors = {}, []

    def thread_main(trainer, name):
        try:
            results[name] = run(trainer)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append((name, exc))
            a_inside.set(), b_inside.set()

    ta = threading.Thread(target=thread_main, args=(patched, "patched"), name="patched")
    tb = threading.Thread(target=thread_main, args=(plain, "plain"), name="plain")
    ta.start()
    assert a_inside.wait(120), "the patched trainer never reached crossent's loss"
    tb.start()  # while the patched trainer's call is inside crossent's loss
    ta.join(120), tb.join(120)
    assert who == {"crossent": ["patched"], "trl": ["plain"]}, who
    assert not errors, errors
    for trainer, name in ((patched, "patched"), (plain, "plain")):
        loss, grads = results[name]
        want_loss, want_grads = alone[id(trainer)]
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        assert len(grads) == len(want_grads)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    hf.unpatch(patched)  # the router stays, transparent: TRL's function for every trainer now
    run(patched)
    assert who["trl"] == ["plain", "MainThread"], who
