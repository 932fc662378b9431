"""The measurement behind test_hf_trl_rl.GRAD_RTOL (a script, not a test): RLOO as
test_rloo_trains_like_trl runs it; the per-step parameter gradients of TRL's own fused head
(float32) and crossent's (float32 and float64), each against the float64 truth: the same trainer
with the model in float64 and TRL's fused head computed by a float64 torch composition
(log_softmax + gather + entropy). Same seeds, same data. From the repository root:

    PYTHONPATH=src:tests/integrations python tests/integrations/trl_rl_float64.py \\
        [model_seed=S] [optim=sgd] [learning_rate=0.0]

(for TRL 1.15, its tree first on PYTHONPATH). Prints, per step, each parameter's max |g - truth|
and ||g - truth|| / ||truth||, the worst parameter's, and all parameters' together."""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # (TRL's kernels on the CPU, as under pytest)
import test_hf_trl_rl as T  # noqa: E402
import trl.trainer.utils as U  # noqa: E402
import trl_helpers as H  # noqa: E402

import crossent  # noqa: E402

PATHS = ("trl32", "crossent32", "crossent64")


class _Float64Head:
    """TRL's ChunkedLogProbFunction.apply as a plain composition (differentiated by autograd)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk, softcap, scale, outputs):
        z = (hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t())) * scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        logp = torch.log_softmax(z / temperature, -1)
        lp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        ent = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
        return lp, ent, None, None, None


def _runs(model_path, tmp, extra):
    real, runs = U._ChunkedLogProbFunction, {}
    for name, dtype, patch in (("truth", torch.float64, False), ("trl32", torch.float32, False),
                               ("crossent32", torch.float32, True), ("crossent64", torch.float64, True)):
        U._ChunkedLogProbFunction = _Float64Head if name == "truth" else real
        trainer, grads = T._rl("rloo", tmp / name, model_path, patch=patch, beta=0.1, temperature=0.8,
                               model_init_kwargs={"dtype": dtype}, **extra)
        trainer.train()
        runs[name] = grads.steps
        logged = [(h.get("num_tokens"), h.get("reward")) for h in trainer.state.log_history if "loss" in h]
        print(name, "(num_tokens, reward) per step:", logged, flush=True)  # (the same batches)
    U._ChunkedLogProbFunction = real
    return runs


def _report(runs):
    truth = runs["truth"]
    for step in range(len(truth)):
        print(f"--- step {step + 1}: parameter, max |truth|; per path max |g - truth|, ||g - truth|| / ||truth||")
        total = {k: [0.0, 0.0] for k in PATHS}
        worst = dict.fromkeys(PATHS, 0.0)
        for name, t in truth[step].items():
            cells = []
            for k in PATHS:
                d = runs[k][step][name].double() - t
                total[k][0] += d.pow(2).sum().item()
                total[k][1] += t.pow(2).sum().item()
                worst[k] = max(worst[k], (d.norm() / t.norm()).item())
                cells.append(f"{k} {d.abs().max().item():.2e} {(d.norm() / t.norm()).item():.1e}")
            print(f"{name[-40:]:40s} {t.abs().max().item():.2e} | " + " | ".join(cells))
        apart = max(((runs["crossent32"][step][p] - runs["trl32"][step][p]).double().norm() / t.norm()).item()
                    for p, t in truth[step].items())
        print("worst parameter:", {k: f"{v:.2e}" for k, v in worst.items()}, f"crossent32 - trl32: {apart:.2e}")
        print("all parameters:", {k: f"{(a / b) ** 0.5:.2e}" for k, (a, b) in total.items()})


def main(argv):
    extra = dict(a.split("=", 1) for a in argv)
    seed = int(extra.pop("model_seed", 0))
    lr = extra.pop("learning_rate", None)
    if lr is not None:  # (a TrainingArguments field common_args sets)
        common = H.common_args
        H.common_args = lambda *a, **k: {**common(*a, **k), "learning_rate": float(lr)}
    tmp = pathlib.Path(tempfile.mkdtemp())
    H.llama(seed=seed).save_pretrained(tmp / "llama")
    H.tokenizer().save_pretrained(tmp / "llama")
    with crossent.use_backend("fused"):  # (as the test's autouse fixture)
        _report(_runs(str(tmp / "llama"), tmp, extra))


if __name__ == "__main__":
    main(sys.argv[1:])
