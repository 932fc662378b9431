"""crossent.integrations.transformers against transformers itself, on tiny random models (no download).

Oracle: the same model, unpatched, with transformers' own loss. float32 unless a test says
otherwise; parity is checked for the loss and for every parameter's gradient. crossent runs on its
fused path throughout (forced: these problems are small enough for its composed route).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("crossent.integrations.transformers")

VOCAB = 1000
TOL32 = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def _fused_path():
    """These tiny models would take crossent's composed route for small problems (F.linear +
    cross_entropy); the fused kernels are what must equal transformers here."""
    import crossent

    with crossent.use_backend("fused"):
        yield


def _tiny(name: str, **extra):
    """A tiny random config of the named architecture (hidden 32, 2 layers, vocab 1000)."""
    base = dict(vocab_size=VOCAB, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                eos_token_id=2)
    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    table = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", decoder),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(decoder, sliding_window=None)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", decoder),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(decoder, head_dim=8)),
        # Gemma 2: final-logit softcap (small, so that it bites on these logits), tied embeddings
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                   dict(decoder, head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8,
                        sliding_window=16)),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel",
                 dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(decoder, sliding_window=None)),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                    dict(decoder, num_local_experts=4, num_experts_per_tok=2,
                         output_router_logits=True, router_aux_loss_coef=0.1,
                         sliding_window=None)),
        "cohere": ("CohereConfig", "CohereForCausalLM", dict(decoder, logit_scale=0.5)),
        "granite": ("GraniteConfig", "GraniteForCausalLM", dict(decoder, logits_scaling=4.0)),
    }
    config_name, model_name, kw = table[name]
    config_cls = getattr(transformers, config_name, None)
    model_cls = getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**base, **kw, **extra})).float()
    model.train()
    return model


MODELS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "phi3", "mixtral", "cohere",
          "granite"]


def _batch(b=3, t=12, seed=1):
    """Right-padded batch: row 0 has 4 padding tokens (mask 0, label -100), row 1 has an ignored prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -4:] = 0
    labels = ids.clone()
    labels[0, -4:] = -100
    labels[1, :5] = -100
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same_grads(got, want):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL32, msg=lambda m, n=name: f"{n}: {m}")


def _loss_function_settable(model):
    prop = getattr(type(model), "loss_function", None)
    return not isinstance(prop, property) or prop.fset is not None


def _keep_arg(model):
    """transformers >= 4.50 calls it logits_to_keep, 4.46-4.49 num_logits_to_keep."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "logits_to_keep" if "logits_to_keep" in params else "num_logits_to_keep"


def _takes_loss_kwargs(model):
    import inspect

    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values())


def _n_counted(labels):
    return int((labels[..., 1:] != -100).sum())


# ------------------------------------------------------------------ the plain loss


def test_causal_lm_loss_equals_transformers_loss_and_grads():
    model = _tiny("llama")
    batch = _batch()
    if not _loss_function_settable(model):
        pytest.skip(f"transformers {transformers.__version__}: model.loss_function has no setter")
    ref, ref_grads = _loss_and_grads(model, **batch)
    model.loss_function = hf.causal_lm_loss
    out, grads = _loss_and_grads(model, **batch)
    torch.testing.assert_close(out.loss, ref.loss, **TOL32)
    torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
    _assert_same_grads(grads, ref_grads)


def test_causal_lm_loss_two_micro_batches_with_num_items_equal_one_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 50, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(0, 50, (4, 9))
    labels[0, 2:] = -100
    labels[3, :4] = -100
    big = hf.causal_lm_loss(logits, labels, 50)
    (g_big,) = torch.autograd.grad(big, logits)
    n = torch.tensor(_n_counted(labels))
    parts = [hf.causal_lm_loss(logits[:2], labels[:2], 50, num_items_in_batch=n),
             hf.causal_lm_loss(logits[2:], labels[2:], 50, num_items_in_batch=n)]
    total = parts[0] + parts[1]
    (g_parts,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, big, **TOL32)
    torch.testing.assert_close(g_parts, g_big, **TOL32)
    # and each part is transformers' own micro-batch loss
    from transformers.loss.loss_utils import ForCausalLMLoss

    want = ForCausalLMLoss(logits[:2], labels[:2], 50, num_items_in_batch=n)
    torch.testing.assert_close(parts[0], want, **TOL32)
    torch.testing.assert_close(big, ForCausalLMLoss(logits, labels, 50), **TOL32)


def test_causal_lm_loss_shift_labels_and_16bit_logits():
    import inspect

    from transformers.loss.loss_utils import ForCausalLMLoss

    if "shift_labels" not in inspect.signature(ForCausalLMLoss).parameters:
        pytest.skip(f"transformers {transformers.__version__}: ForCausalLMLoss has no shift_labels")

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 64).bfloat16()
    labels = torch.randint(0, 64, (2, 7))
    shift = torch.randint(0, 64, (2, 7))
    shift[1, 3] = -100
    got = hf.causal_lm_loss(logits, None, 64, shift_labels=shift)
    want = ForCausalLMLoss(logits, labels, 64, shift_labels=shift)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_items", [None, 40])
def test_causal_lm_loss_of_16bit_logits_is_transformers_float32_loss(dtype, num_items):
    """transformers computes on logits.float(): crossent returns that float32 loss unrounded (a
    16-bit loss would be off by up to 2^-9 relative), and the same 16-bit gradient."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(0)
    # (large enough for crossent's fused path rather than torch's kernel)
    logits = (3 * torch.randn(4, 64, 4000)).to(dtype).requires_grad_()
    labels = torch.randint(0, 4000, (4, 64))
    labels[0, 10:] = -100
    got = hf.causal_lm_loss(logits, labels, 4000, num_items_in_batch=num_items)
    want = ForCausalLMLoss(logits, labels, 4000, num_items_in_batch=num_items)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=2e-6)
    (g_got,) = torch.autograd.grad(got * 1000, logits)
    (g_want,) = torch.autograd.grad(want * 1000, logits)
    assert g_got.dtype == dtype
    # transformers rounds the float32 gradient to 16 bits once; crossent keeps it unscaled in 16
    # bits (so an AMP loss scale cannot underflow it) and rounds again after scaling: 3 units apart
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(g_got.float(), g_want.float(), atol=1e-6, rtol=3 * unit)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param(dict(vocab_size=49), ValueError, "vocab_size=49", id="vocab-size-mismatch"),
        pytest.param(dict(labels=None), ValueError, "labels and shift_labels are both None",
                     id="no-labels"),
        pytest.param(dict(num_items_in_batch="3"), TypeError, "num_items_in_batch must be a number",
                     id="num-items-a-string"),
        pytest.param(dict(num_items_in_batch=torch.ones(2)), ValueError,
                     "num_items_in_batch must be a number", id="num-items-two-elements"),
        pytest.param(dict(logits=[1.0]), TypeError, "logits must be a tensor", id="logits-a-list"),
    ],
)
def test_causal_lm_loss_errors(kwargs, error, match):
    """crossent's exception types (also RuntimeErrors, as torch's argument errors are)."""
    from crossent._checks import InvalidArgument, InvalidArgumentType

    args = dict(logits=torch.randn(2, 3, 50), labels=torch.zeros(2, 3, dtype=torch.long), vocab_size=50)
    with pytest.raises(error, match=match) as info:
        hf.causal_lm_loss(**{**args, **kwargs})
    assert isinstance(info.value, InvalidArgumentType if error is TypeError else InvalidArgument)
    assert isinstance(info.value, RuntimeError)


# ------------------------------------------------------------------ patch / unpatch


@pytest.mark.parametrize("name", MODELS)
def test_patched_loss_and_every_gradient_equal_unpatched(name):
    model = _tiny(name)
    batch = _batch()
    ref, ref_grads = _loss_and_grads(model, **batch)
    hf.patch(model)
    out, grads = _loss_and_grads(model, **batch)
    assert out.logits is None
    assert type(out) is type(ref)
    torch.testing.assert_close(out.loss, ref.loss, **TOL32)
    _assert_same_grads(grads, ref_grads)


def _relative_error(a, ref):
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2", "mixtral"])
def test_patched_bfloat16_model_is_as_accurate_as_unpatched(name):
    """bfloat16 model (bf16 products, float32 softmax): the patched loss is transformers' float32
    loss, and every parameter gradient is as close to the float64 truth (the same bf16 weights,
    run in float32, unpatched: its error is ~2^-24, the bf16 runs' ~2^-8) as the unpatched bf16
    model's gradient is."""
    model = _tiny(name).to(torch.bfloat16)
    batch = _batch()
    truth = copy.deepcopy(model).float()  # (MoE grouped products have no float64 kernel)
    ref64, grads64 = _loss_and_grads(truth, **batch)
    ref, ref_grads = _loss_and_grads(model, **batch)
    hf.patch(model)
    out, grads = _loss_and_grads(model, **batch)
    # transformers returns a float32 loss (4.46's GPT-2: a bf16 one); crossent's is float32
    assert out.loss.dtype == torch.float32 and ref.loss.dtype in (torch.float32, torch.bfloat16)
    # both losses carry bf16 rounding of the model's activations; crossent's adds no 16-bit
    # rounding of its own (which would be up to 2^-9 of the loss)
    assert abs(out.loss.item() - ref64.loss.item()) <= 1.5 * abs(ref.loss.item() - ref64.loss.item()) + 1e-3
    torch.testing.assert_close(out.loss, ref.loss.float(), atol=0, rtol=1e-2)
    assert grads.keys() == ref_grads.keys() == grads64.keys()
    for n in grads64:
        ours, theirs = _relative_error(grads[n], grads64[n]), _relative_error(ref_grads[n], grads64[n])
        assert grads[n].dtype == torch.bfloat16
        assert ours <= 1.5 * theirs + 2.0**-8, (n, ours, theirs)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_patched_num_items_in_batch_over_two_micro_batches_equals_one_batch(name):
    model = _tiny(name)
    if not _takes_loss_kwargs(model):
        pytest.skip(f"transformers {transformers.__version__}: {type(model).__name__} takes no num_items_in_batch")
    batch = _batch(b=4)
    ref, ref_grads = _loss_and_grads(model, **batch)  # one batch, mean over counted tokens
    n = torch.tensor(_n_counted(batch["labels"]))
    micro = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    unpatched = [model(**m, num_items_in_batch=n).loss for m in micro]
    hf.patch(model)
    model.zero_grad(set_to_none=True)
    losses = []
    for m, want in zip(micro, unpatched):
        loss = model(**m, num_items_in_batch=n).loss
        torch.testing.assert_close(loss, want, **TOL32)  # each micro-batch as transformers
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(sum(losses), ref.loss, **TOL32)
    _assert_same_grads({k: p.grad for k, p in model.named_parameters()}, ref_grads)


def test_patched_shift_labels_logits_to_keep_and_tuple_output():
    model = _tiny("llama")
    batch = _batch()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    hf.patch(model)
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], **{_keep_arg(model): 5}).loss
    want = torch.nn.functional.cross_entropy(full[:, -5:].reshape(-1, VOCAB), shift[:, -5:].reshape(-1))
    torch.testing.assert_close(got, want, **TOL32)
    got = model(input_ids=batch["input_ids"], labels=batch["labels"], shift_labels=shift,
                attention_mask=batch["attention_mask"], return_dict=False)
    want = torch.nn.functional.cross_entropy(full.reshape(-1, VOCAB), shift.reshape(-1))
    assert isinstance(got, tuple) and got[1] is None
    torch.testing.assert_close(got[0], want, **TOL32)


def test_eval_mode_and_no_labels_run_the_original_forward():
    model = _tiny("llama")
    batch = _batch()
    model.eval()
    ref = model(**batch)
    hf.patch(model)
    out = model(**batch)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
    model.train()
    with pytest.warns(RuntimeWarning, match="without labels, so crossent's fused loss did not run"):
        no_labels = model(input_ids=batch["input_ids"])
    assert no_labels.logits is not None and no_labels.loss is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model
        model(input_ids=batch["input_ids"])
        with torch.no_grad():  # no training step: no warning either
            hf.patch(_tiny("llama"))(input_ids=batch["input_ids"])


def test_unpatch_restores_the_model_bit_identically():
    model = _tiny("gemma2")
    never = copy.deepcopy(model)
    batch = _batch()
    hf.patch(model)
    assert hf.is_patched(model) and "forward" in vars(model)
    model(**batch).loss.backward()
    hf.unpatch(model)
    assert not hf.is_patched(model) and "forward" not in vars(model)
    assert model.forward.__func__ is type(model).forward
    model.zero_grad(set_to_none=True)
    out, grads = _loss_and_grads(model, **batch)
    ref, ref_grads = _loss_and_grads(never, **batch)
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.logits, ref.logits)
    for n in ref_grads:
        assert torch.equal(grads[n], ref_grads[n]), n


def test_deepcopy_of_a_patched_model_runs_on_the_copy():
    model = hf.patch(_tiny("llama"))
    twin = copy.deepcopy(model)
    assert vars(twin)["forward"].__self__ is twin
    with torch.no_grad():
        twin.lm_head.weight.zero_()  # all logits 0: loss = log V on the copy, not on the original
    batch = _batch()
    torch.testing.assert_close(twin(**batch).loss, torch.tensor(VOCAB, dtype=torch.float32).log())
    assert abs(model(**batch).loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) > 1e-3


def test_patched_forward_signature_is_the_models():
    import inspect

    model = _tiny("llama")
    before = inspect.signature(model.forward)
    hf.patch(model)
    assert inspect.signature(model.forward) == before  # Trainer inspects it


def test_patch_errors():
    model = _tiny("llama")
    with pytest.raises(TypeError, match="PreTrainedModel, got Linear"):
        hf.patch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"chunk_size must be >= 1 \(rows per chunk\), got 0"):
        hf.patch(model, chunk_size=0)
    with pytest.raises(TypeError, match=r"chunk_size must be an int \(rows per chunk\) or None, got 2.0"):
        hf.patch(model, chunk_size=2.0)
    hf.patch(model)
    with pytest.raises(ValueError, match="already patched"):
        hf.patch(model)
    hf.unpatch(model)
    with pytest.raises(ValueError, match="is not patched"):
        hf.unpatch(model)

    class ScaledHead(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    head = ScaledHead(32, VOCAB, bias=False)
    model.lm_head = head
    with pytest.raises(ValueError, match=r"must be a plain nn.Linear \(or PEFT's LoRA Linear over one\), got ScaledHead"):
        hf.patch(model)


def test_patch_refuses_a_non_causal_model():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="causal language model .* got BertForMaskedLM"):
        hf.patch(transformers.BertForMaskedLM(config))


def test_a_config_scale_the_forward_does_not_apply_is_not_applied():
    """The probe keeps the factors the forward really applies: Llama never reads logit_scale."""
    model = _tiny("llama")
    model.config.logit_scale = 3.0
    batch = _batch()
    ref, ref_grads = _loss_and_grads(model, **batch)
    hf.patch(model)
    out, grads = _loss_and_grads(model, **batch)
    torch.testing.assert_close(out.loss, ref.loss, **TOL32)
    _assert_same_grads(grads, ref_grads)


class ScaledLlamaForCausalLM(transformers.LlamaForCausalLM):
    """A forward that scales its logits by a factor no config field names."""

    def forward(self, *args, labels=None, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.5
        if labels is not None:
            out.loss = self.loss_function(out.logits, labels, self.config.vocab_size)
        return out


def test_unknown_logit_post_processing_is_refused_at_patch():
    torch.manual_seed(0)
    model = ScaledLlamaForCausalLM(_tiny("llama").config)
    with pytest.raises(ValueError, match="transforms its logits in a way patch does not know"):
        hf.patch(model)
    assert not hf.is_patched(model) and "forward" not in vars(model)


def test_post_processing_changed_after_patch_raises_at_the_next_step():
    """The check at the first patched call stays, as a backstop: a softcap switched on after patch
    (Gemma 2 reads it from its config on each call) is not silently dropped."""
    model = hf.patch(_tiny("gemma2", final_logit_softcapping=None))
    model.config.final_logit_softcapping = 0.5
    with pytest.raises(RuntimeError, match="transforms its logits in a way patch does not know"):
        model(**_batch())


def test_compute_loss_func_on_a_patched_models_outputs_says_use_one_of_them():
    """A patched model in training returns a ModelOutput without a "logits" key (not a KeyError)."""
    model = hf.patch(_tiny("llama"))
    out = model(**_batch())
    with pytest.raises(ValueError, match="outputs have no logits .* use patch\\(\\) or compute_loss_func, not both"):
        hf.compute_loss_func(out, _batch()["labels"])


def test_the_integration_raises_only_through_crossent_checks():
    """Every message lives in crossent._checks.integrations: no raise statement in the package."""
    import ast
    import pathlib

    root = pathlib.Path(hf.__file__).parent.parent  # src/crossent/integrations
    raises = [f"{path.name}:{node.lineno}" for path in sorted(root.rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Raise)]
    assert raises == []


def test_import_without_transformers_says_how_to_install_it():
    code = ("import sys; sys.modules['transformers'] = None\n"  # `import transformers` fails
            "import crossent.integrations.transformers")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ImportError: crossent.integrations.transformers needs transformers>=4.46: pip install 'crossent[hf]'" in proc.stderr


def test_bad_config_value_named():
    model = _tiny("gemma2")
    model.config.final_logit_softcapping = -1.0
    with pytest.raises(ValueError, match="config.final_logit_softcapping must be a positive finite number or None, got -1.0"):
        hf.patch(model)


def test_the_head_is_called_once_with_its_hooks_around_the_fused_loss():
    """What FSDP / ZeRO-3 rely on: the head's pre-hook runs before its weight is read, the
    post-hook sees the loss as the module's output (so backward hooks attach to it)."""
    model = _tiny("llama")
    events = []
    real = model.lm_head.weight.data.clone()
    model.lm_head.weight.data.zero_()  # "sharded": unusable until the pre-hook gathers it

    def pre(module, args):
        events.append("pre")
        module.weight.data.copy_(real)

    def post(module, args, output):
        events.append(("post", output.dim()))
        module.weight.data.zero_()  # "released" after the call

    model.lm_head.register_forward_pre_hook(pre)
    model.lm_head.register_forward_hook(post)
    batch = _batch()
    ref = model(**batch).loss  # unpatched, under the same hooks
    events.clear()
    hf.patch(model)
    out = model(**batch).loss
    assert events == ["pre", ("post", 0)]  # one call; its output is the (scalar) loss
    torch.testing.assert_close(out, ref, **TOL32)


# ------------------------------------------------------------------ Trainer and memory


def _trainer_losses(tmp_path, model, **trainer_kw):
    from torch.utils.data import Dataset

    class Rows(Dataset):
        def __init__(self):
            b = _batch(b=8, t=12, seed=3)
            self.rows = [{k: v[i] for k, v in b.items()} for i in range(8)]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=3, logging_steps=1, learning_rate=1e-2, report_to=[], use_cpu=True,
        save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(), **trainer_kw)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_losses_with_patch_and_compute_loss_func_equal_unpatched(tmp_path):
    model = _tiny("llama")
    patched = hf.patch(copy.deepcopy(model))
    plain = copy.deepcopy(model)
    want = _trainer_losses(tmp_path / "a", model)
    got = _trainer_losses(tmp_path / "b", patched)
    got_fn = _trainer_losses(tmp_path / "c", plain, compute_loss_func=hf.compute_loss_func)
    assert len(want) == 3
    assert got == pytest.approx(want, rel=1e-5)
    assert got_fn == pytest.approx(want, rel=1e-5)


def test_patched_step_keeps_less_for_backward_when_logits_dominate():
    """Bytes of the tensors autograd saves for backward (distinct storages), a proxy for the peak
    memory of a training step that works on CPU: the unpatched step keeps the (B, T, V) logits."""

    def saved_bytes(model, batch):
        storages = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch).loss
        loss.backward()
        return sum(storages.values())

    model = _tiny("llama", vocab_size=16000)
    batch = _batch(b=2, t=64)
    before = saved_bytes(model, batch)
    hf.patch(model)
    after = saved_bytes(model, batch)
    logits_bytes = 2 * 64 * 16000 * 4
    assert before - after >= logits_bytes, (before, after)


_STEP_PEAK = """
import json, sys, torch, transformers
import crossent.integrations.transformers as hf
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, pad_token_id=0)
model = transformers.LlamaForCausalLM(config).train()
if sys.argv[1] == "patched":
    hf.patch(model)
ids = torch.randint(3, 32000, (2, 256))
def step():
    model.zero_grad(set_to_none=False)
    model(input_ids=ids, labels=ids).loss.backward()
def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
step()  # warm-up: parameter gradients allocated, allocator and library pages touched
import crossent
crossent.empty_cache()  # buffers kept from the warm-up are the measured step's memory too
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
before = kb("VmRSS")
step()
print(json.dumps({"extra_bytes": (kb("VmHWM") - before) * 1024}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_patched_training_step_peak_memory_is_below_unpatched():
    """Peak RSS of one training step over the step's start, each model in a fresh process: Llama
    with a 32000-token vocabulary and hidden size 32, 2 x 256 tokens, so the float32 logits
    (62.5 MiB) dominate. Unpatched, the step holds the logits, their log-softmax and gradient;
    patched, a 16 MiB chunk and the weight's gradient."""
    procs = {case: subprocess.Popen([sys.executable, "-c", _STEP_PEAK, case], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case in ("unpatched", "patched")}
    peak = {}
    for case, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        peak[case] = json.loads(out.strip().splitlines()[-1])["extra_bytes"]
    logits = 2 * 256 * 32000 * 4
    assert peak["unpatched"] > logits, peak  # the measurement sees the logits
    assert peak["patched"] < logits / 2, peak
    assert peak["patched"] < peak["unpatched"] - logits, peak
