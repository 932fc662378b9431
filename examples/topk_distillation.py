"""Distil a student from a served teacher that returns only its top-k log-probs per token.

    .venv/bin/python examples/topk_distillation.py                  # 200 steps, k=16
    .venv/bin/python examples/topk_distillation.py --steps 50 --k 4 --no-tail

The recipe (a teacher behind an inference server: vLLM's ``logprobs=k``, TRL's server distillation):
  1. the server runs the teacher once over the training tokens and sends back, per token, the ids
     of its k most likely next tokens and their log-probabilities, (N, k) each (``serve_topk``:
     only these leave the "server"; pad a row with ``ignore_index`` where it has fewer);
  2. the student trains on them with ``crossent.linear_topk_distillation_loss(h, W, ids, log_q)``:
     its (N, V) logits are never built; ``tail=True`` adds one bucket for the mass outside the k ids
     on both sides (the teacher's ``1 - sum q``, the student's summed over the other classes).

No download and no GPU: the models are small random MLP language models over bytes (token id =
byte value, V = 512 so that the head dominates), the text is Python's Zen (``import this``); the
teacher is wider (D_t = 96) and sharper than the student (D = 32). The script checks crossent's
loss against the float64 reference on the first batch and prints the top-k loss and the student's
full KL(teacher || student) (an evaluation the server could not give: it uses the teacher's dense
distribution) before and after training; both fall.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io

import torch
import torch.nn.functional as F
from torch import nn

import crossent

VOCAB = 512


def zen_bytes() -> torch.Tensor:
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        import this
    return torch.tensor(list(codecs.decode(this.s, "rot13").encode()))


class TinyLM(nn.Module):
    """Next-token model on the current and previous byte: embeddings -> MLP -> hidden (N, D); the
    head (V, D) is separate, as an LM's lm_head (the fused loss takes its weight)."""

    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.prev = nn.Embedding(VOCAB, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, VOCAB)
        with torch.no_grad():
            self.head.weight.mul_(scale)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([tokens[:1], tokens[:-1]])
        x = self.embed(tokens) + self.prev(prev)
        return x + self.mlp(x)  # (N, D)


@torch.no_grad()
def serve_topk(teacher: TinyLM, tokens: torch.Tensor, k: int, rows: int = 256):
    """The server: the teacher's top-k next-token ids and log-probs (N, k), computed in chunks of
    rows (it too never holds all N x V logits)."""
    ids, log_q = [], []
    for i in range(0, len(tokens), rows):
        log_probs = F.log_softmax(teacher.head(teacher.hidden(tokens[i:i + rows])), -1)
        top = log_probs.topk(k, dim=-1)
        ids.append(top.indices)
        log_q.append(top.values)
    return torch.cat(ids), torch.cat(log_q)


@torch.no_grad()
def full_kl(teacher: TinyLM, student: TinyLM, tokens: torch.Tensor) -> float:
    """Evaluation only: mean KL(q || p) over the whole vocabulary."""
    log_q = F.log_softmax(teacher.head(teacher.hidden(tokens)), -1)
    log_p = F.log_softmax(student.head(student.hidden(tokens)), -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean").item()


def topk_loss(student: TinyLM, tokens, ids, log_q, tail: bool):
    return crossent.linear_topk_distillation_loss(student.hidden(tokens), student.head.weight, ids, log_q,
                                                  linear_bias=student.head.bias, tail=tail)


def reference_gap(student: TinyLM, tokens, ids, log_q, tail: bool) -> float:
    """|crossent - float64 reference| of the loss on one batch (the reference builds the logits)."""
    with torch.no_grad():
        ours = topk_loss(student, tokens, ids, log_q, tail)
        h = student.hidden(tokens).double()
        ref = crossent.reference.linear_topk_distillation_loss(
            h, student.head.weight.double(), ids, log_q.double(), student.head.bias.double(), tail=tail)
    return abs(ours.item() - ref.item())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-tail", dest="tail", action="store_false")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    tokens = zen_bytes()
    teacher, student = TinyLM(96, scale=4.0).eval(), TinyLM(32)
    ids, log_q = serve_topk(teacher, tokens, args.k)  # all the student ever sees of the teacher
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr)
    gap = reference_gap(student, tokens[:args.batch], ids[:args.batch], log_q[:args.batch], args.tail)
    first = topk_loss(student, tokens, ids, log_q, args.tail).item()
    kl_before = full_kl(teacher, student, tokens)
    gen = torch.Generator().manual_seed(1)
    for _ in range(args.steps):
        rows = torch.randint(0, len(tokens), (args.batch,), generator=gen)
        loss = topk_loss(student, tokens[rows], ids[rows], log_q[rows], args.tail)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = topk_loss(student, tokens, ids, log_q, args.tail).item()
    result = {"reference_gap": gap, "topk_loss_before": first, "topk_loss_after": last,
              "full_kl_before": kl_before, "full_kl_after": full_kl(teacher, student, tokens)}
    print(f"N={len(tokens)} tokens, V={VOCAB}, k={args.k}, tail={args.tail}, {args.steps} steps")
    print(f"first batch: |crossent - float64 reference| = {gap:.2e}")
    print(f"top-k loss      {first:.4f} -> {last:.4f}")
    print(f"full KL(q || p) {kl_before:.4f} -> {result['full_kl_after']:.4f}  (evaluation: the dense teacher)")
    return result


if __name__ == "__main__":
    main()
