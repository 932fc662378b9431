"""crossent under TRL's trainers (tiny random Llama, word-level tokenizer; no downloads).

Oracle: the same trainer unpatched, i.e. TRL's own fused LM head. float32 (TRL's configs default
to bf16 autocast, set off here; the bf16 test compares accuracy against a float32 run instead).
Gradients are read before the optimizer step with clipping off (max_grad_norm=0), summed over
the two accumulated micro-batches as the Trainer sums them.
"""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
try:  # TRL imports lazily: a TRL too new for the transformers in use fails here
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: F401
except Exception as exc:  # (RuntimeError from transformers' lazy import, ImportError, ...)
    pytest.skip(f"TRL {trl.__version__} does not import with transformers "
                f"{transformers.__version__}: {exc}", allow_module_level=True)
hf = pytest.importorskip("crossent.integrations.transformers")
import trl_helpers as H  # noqa: E402

import crossent  # noqa: E402
import crossent.functional  # noqa: E402

TOL = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture(autouse=True)
def _fused_path():
    with crossent.use_backend("fused"):
        yield


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of crossent.functional.linear_cross_entropy (what the patch calls)."""
    return H.count_calls(monkeypatch, crossent.functional, "linear_cross_entropy")


class _Grads(transformers.TrainerCallback):
    """Every parameter's gradient at each optimizer step (before it is applied)."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def _sft(tmp_path, model=None, *, patch_trainer=False, peft_config=None, **config):
    grads = _Grads()
    args = trl.SFTConfig(**H.common_args(tmp_path, max_grad_norm=0.0, **config), max_length=32)
    trainer = trl.SFTTrainer(model=model if model is not None else H.llama(), args=args,
                             train_dataset=H.sft_dataset(), processing_class=H.tokenizer(),
                             callbacks=[grads], peft_config=peft_config)
    if patch_trainer:
        hf.patch(trainer)
    return trainer, grads


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory):
    """The unpatched float32 SFT run (TRL's own fused head, crossent never called), trained once
    for the three tests that compare against it: (trainer, its gradients, its logged metrics)."""
    count = {"n": 0}
    real = crossent.functional.linear_cross_entropy

    def counted(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crossent.functional, "linear_cross_entropy", counted)
        ref, grads = _sft(tmp_path_factory.mktemp("sft_reference"))
        ref.train()
    assert count["n"] == 0
    return ref, grads, _logs(ref)


def _logs(trainer, keys=("loss", "entropy", "mean_token_accuracy", "num_tokens")):
    return [{k: h[k] for k in keys} for h in trainer.state.log_history if "loss" in h]


def _assert_same_steps(got, want, **tol):
    assert len(got.steps) == len(want.steps) == 2
    for g, w in zip(got.steps, want.steps):
        assert g.keys() == w.keys()
        for name in w:
            torch.testing.assert_close(g[name], w[name], **(tol or TOL), msg=lambda m, n=name: f"{n}: {m}")


def _assert_same_logs(got, want, rel=1e-5):
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=1e-6), (key, g, w)


def test_sft_trainer_trains_with_crossent_and_equals_trl(tmp_path, calls, sft_reference):
    """Gradient accumulation 2, 2 optimizer steps: crossent called on every micro-batch, and the
    loss, TRL's logged metrics and every parameter's gradient equal TRL's own run."""
    ref, ref_grads, ref_logs = sft_reference  # (TRL's own fused head: crossent never ran there)
    trainer, grads = _sft(tmp_path / "patched", patch_trainer=True)
    assert hf.is_patched(trainer) and hf.is_patched(trainer.model)
    trainer.train()
    assert calls["n"] == 4  # 2 steps x 2 micro-batches, once each
    _assert_same_steps(grads, ref_grads)
    _assert_same_logs(_logs(trainer), ref_logs)
    # evaluation goes through the fused head too (eval mode, no grad): the same metrics
    evaluated = [t.evaluate(H.sft_dataset(rows=4, seed=9)) for t in (trainer, ref)]
    assert calls["n"] > 4
    for key in ("eval_loss", "eval_entropy", "eval_mean_token_accuracy"):
        assert evaluated[0][key] == pytest.approx(evaluated[1][key], rel=1e-5), key


def test_sft_dft_loss_uses_the_per_token_log_probs(tmp_path, calls):
    """loss_type='dft' weights each token by its probability: right only with per-token gradients."""
    ref, ref_grads = _sft(tmp_path / "ref", loss_type="dft")
    ref.train()
    trainer, grads = _sft(tmp_path / "patched", patch_trainer=True, loss_type="dft")
    trainer.train()
    assert calls["n"] == 4
    _assert_same_steps(grads, ref_grads)
    _assert_same_logs(_logs(trainer), _logs(ref))


def test_sft_with_peft_lora_equals_trl(tmp_path, calls):
    peft = pytest.importorskip("peft")
    config = lambda: peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                     target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    ref, ref_grads = _sft(tmp_path / "ref", peft_config=config())
    ref.train()
    trainer, grads = _sft(tmp_path / "patched", patch_trainer=True, peft_config=config())
    assert hf.is_patched(trainer.model)  # the PeftModel, through its base model
    trainer.train()
    assert calls["n"] == 4
    assert all(n.count("lora_") for n in grads.steps[0])  # only the adapters train
    _assert_same_steps(grads, ref_grads)
    _assert_same_logs(_logs(trainer), _logs(ref))


def test_model_patched_before_the_trainer_warns_until_the_trainer_is_patched(tmp_path, calls, sft_reference):
    """TRL wraps the forward at construction and computes its own loss: crossent says so once at the
    first step; patch(trainer) then takes over (the model's earlier layer goes inert)."""
    model = hf.patch(H.llama())
    trainer, _ = _sft(tmp_path / "a", model)
    assert not hf.is_patched(model)  # the truth: TRL's wrapper now bypasses crossent
    with pytest.warns(RuntimeWarning, match="wrapped after patch\\(\\) by TRL's fused LM head"):
        trainer.train()
    assert calls["n"] == 0

    _, ref_grads, ref_logs = sft_reference
    model = hf.patch(H.llama())
    trainer, grads = _sft(tmp_path / "b", model, patch_trainer=True)
    assert hf.is_patched(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train()
    assert calls["n"] == 4
    _assert_same_steps(grads, ref_grads)
    _assert_same_logs(_logs(trainer), ref_logs)


def test_patch_after_trainer_construction_then_unpatch_keeps_trls_wrapper(tmp_path, calls):
    trainer, _ = _sft(tmp_path)
    model = trainer.model
    trl_forward = vars(model)["forward"]
    hf.patch(trainer)
    assert vars(model)["forward"] is not trl_forward
    hf.unpatch(trainer)
    assert vars(model)["forward"] is trl_forward and not hf.is_patched(trainer)
    batch = next(iter(trainer.get_train_dataloader()))
    out = model(**batch, fused_lm_head=True)  # TRL's fused head, as before patch
    assert out.log_probs is not None and calls["n"] == 0


def test_unpatch_under_trls_wrapper_leaves_the_wrapper_working(tmp_path, calls):
    """patch(model), then TRL wraps it: unpatch(model) cannot take crossent's layer out of TRL's
    closure, so the layer becomes a pass-through; TRL's forward and the model's loss still work."""
    model = hf.patch(H.llama())
    trainer, _ = _sft(tmp_path, model)
    trl_forward = vars(model)["forward"]
    hf.unpatch(model)
    assert not hf.is_patched(model) and vars(model)["forward"] is trl_forward
    batch = next(iter(trainer.get_train_dataloader()))
    fused = model(**batch, fused_lm_head=True)
    plain = model(**batch)  # through TRL's wrapper and crossent's inert layer: transformers' loss
    assert fused.log_probs is not None and plain.logits is not None and calls["n"] == 0
    n = (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(plain.loss, -fused.log_probs.sum() / n, **TOL)
    hf.patch(trainer)  # and patching again works
    assert hf.is_patched(model)


def test_dpo_trainer_trains_with_crossent_and_equals_trl(tmp_path, calls):
    """DPO sums the per-token log-probs per sequence (chosen, rejected) into its sigmoid loss: the
    per-token gradients matter. The reference model is patched too (forward only)."""

    def dpo(path, patch):
        model = H.llama()
        grads = _Grads()
        args = trl.DPOConfig(**H.common_args(path, max_grad_norm=0.0), max_length=32)
        trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                                 train_dataset=H.dpo_dataset(), processing_class=H.tokenizer(),
                                 callbacks=[grads])
        if patch:
            hf.patch(trainer)
            assert hf.is_patched(trainer.ref_model)
        trainer.train()
        return trainer, grads

    ref, ref_grads = dpo(tmp_path / "ref", False)
    assert calls["n"] == 0
    trainer, grads = dpo(tmp_path / "patched", True)
    assert calls["n"] == 8  # 2 steps x 2 micro-batches x (policy + reference)
    _assert_same_steps(grads, ref_grads)
    keys = [k for k in ref.state.log_history[0] if k.startswith(("loss", "rewards/", "logps/", "logits/",
                                                                 "entropy", "mean_token"))]
    assert "entropy" in keys and "mean_token_accuracy" in keys and "logits/chosen" in keys
    _assert_same_logs(_logs(trainer, keys), _logs(ref, keys), rel=1e-4)


def test_bf16_autocast_sft_is_as_accurate_as_trl(tmp_path, sft_reference):
    """TRL's default bf16 autocast: crossent's gradients are as close to the float32 run's as TRL's."""
    _, truth_grads, _ = sft_reference
    ref, ref_grads = _sft(tmp_path / "ref", bf16=True)
    ref.train()
    trainer, grads = _sft(tmp_path / "patched", patch_trainer=True, bf16=True)
    trainer.train()
    for g, r, t in zip(grads.steps[:1], ref_grads.steps[:1], truth_grads.steps[:1]):
        for name in t:
            ours = ((g[name] - t[name]).norm() / t[name].norm()).item()
            theirs = ((r[name] - t[name]).norm() / t[name].norm()).item()
            assert ours <= 1.5 * theirs + 2.0**-8, (name, ours, theirs)


def test_patch_trainer_refusals(tmp_path, monkeypatch):
    trainer, _ = _sft(tmp_path / "a")
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: outputs.loss
    with pytest.raises(ValueError, match="SFTTrainer with compute_loss_func .* is not supported"):
        hf.patch(trainer)
    assert not hf.is_patched(trainer)

    trainer, _ = _sft(tmp_path / "b")
    monkeypatch.setattr(trl, "__version__", "1.14.0")
    with pytest.raises(RuntimeError, match=r"TRL 1.14.0 is not supported .*from TRL 1.15 on"):
        hf.patch(trainer)
    monkeypatch.undo()

    class Other(trl.SFTTrainer.__mro__[1]):  # a TRL trainer crossent has not checked
        def __init__(self):
            pass

    with pytest.raises(ValueError, match="Other is not supported: crossent patches SFTTrainer, DPOTrainer"):
        hf.patch(Other())

    model = H.llama()
    plain = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        **H.common_args(tmp_path / "c")), compute_loss_func=hf.compute_loss_func)
    with pytest.raises(ValueError, match="use patch\\(\\) or compute_loss_func, not both"):
        hf.patch(plain)


def test_trl_is_optional_for_the_integration():
    """[hf] without TRL (or PEFT): the integration imports and patches a model."""
    import subprocess

    code = ("import sys; sys.modules['trl'] = None; sys.modules['peft'] = None\n"
            "import transformers, crossent.integrations.transformers as hf\n"
            "c = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,"
            " num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)\n"
            "m = hf.patch(transformers.LlamaForCausalLM(c).train())\n"
            "ids = __import__('torch').randint(0, 64, (1, 8))\n"
            "assert m(input_ids=ids, labels=ids).logits is None and hf.is_patched(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_patched_sft_step_peak_memory_is_below_unpatched():
    """Peak RSS of an SFTTrainer optimizer step over its start (steady state: the second step),
    each case in a fresh process (trl_peak_worker.py): Llama with a 32000-token vocabulary
    and hidden size 32, 2 rows x 255 predicted tokens, so the float32 logits (62 MiB) dominate.
    TRL's own fused head on the CPU still builds (tokens x vocabulary) tiles and several
    temporaries of that size; crossent's patched step holds one chunk and the weight gradient."""
    import importlib.util
    import json
    import pathlib
    import subprocess

    from crossent.integrations.transformers import _trl

    if _trl.version()[:2] < (1, 16) and importlib.util.find_spec("triton") is not None:
        pytest.skip("TRL 1.15 runs its Triton kernel on CPU tensors when Triton is installed "
                    "(through the interpreter here: minutes per step); TRL 1.16 does not")
    worker = str(pathlib.Path(__file__).with_name("trl_peak_worker.py"))
    procs = {case: subprocess.Popen([sys.executable, worker, case, "32000"], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case in ("unpatched", "patched")}
    peak = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        peak[case] = json.loads(out.strip().splitlines()[-1])["extra_bytes"]
    logits = 2 * 255 * 32000 * 4
    assert peak["unpatched"] > logits, peak  # the measurement sees the logits-sized buffers
    assert peak["patched"] < logits, peak
    assert peak["patched"] < peak["unpatched"] - logits, peak


@pytest.mark.parametrize("name", ["llama", "gemma2", "mixtral", "cohere", "granite"])
def test_fused_lm_head_outputs_equal_trls(name):
    """model(..., fused_lm_head=True) patched vs TRL's own, over the logit transforms (softcap,
    scales) and the MoE auxiliary loss; every field TRL can compute, and the gradients."""
    from test_hf_transformers import _batch, _tiny

    utils = pytest.importorskip("trl.trainer.utils")
    model = _tiny(name)
    ref = copy.deepcopy(model)
    outputs = ("log_probs", "entropy", "is_top1", "mean_logits", "log_sum_sq_probs")
    for m in (model, ref):
        utils.add_fused_lm_head(m, outputs=outputs)
    hf.patch(model)
    batch = _batch()
    kwargs = dict(output_router_logits=True) if name == "mixtral" else {}
    got, want = model(**batch, **kwargs, fused_lm_head=True), ref(**batch, **kwargs, fused_lm_head=True)
    for field in ("loss", "log_probs", "entropy", "mean_logits", "log_sum_sq_probs", "aux_loss"):
        if getattr(want, field) is None:
            assert getattr(got, field) is None, field
            continue
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-5, atol=2e-5, msg=field)
    assert torch.equal(got.is_top1, want.is_top1) and torch.equal(got.label_mask, want.label_mask)
    got.loss.backward()
    want.loss.backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=n)
