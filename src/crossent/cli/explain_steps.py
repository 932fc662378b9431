"""The step-by-step text of `crossent explain`, and its check against crossent's functional API.

Every term is computed here with plain float arithmetic straight from the formulas (math.exp,
math.log), then the same inputs go through crossent's functional API in float64 and the two results
are printed side by side. They must agree: if they do not, the command says so and exits 1.

Formulas (C classes, row i with target t_i, class weights w, label smoothing eps):

    softmax        p_c = exp(z_c) / sum_j exp(z_j)
    target dist.   q_c = (1 - eps) * [c == t] + eps / C
    row loss       l_i = sum_c w_c * q_c * (-log p_c)      (= w_t * (-log p_t) without smoothing)
    'mean'         sum_i l_i / sum_i w[t_i] over rows whose target is not ignore_index
    'sum'          sum_i l_i

    binary         l_i = -v_i * [pw * y_i * log p_i + (1 - y_i) * log(1 - p_i)],  p_i = sigmoid(x_i)
                   (v: per-row weight, pw: pos_weight, y smoothed to y * (1 - eps) + eps / 2);
                   'mean' divides by the number of rows; torch clamps log at -100.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import click


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _f(x: float, width: int = 8) -> str:
    return f"{x:>{width}.4f}" if math.isfinite(x) else f"{x:>{width}}"


def _agree(manual: Sequence[float], library: Sequence[float]) -> bool:
    return all(
        (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a))
        for a, b in zip(manual, library)
    )


def _result_line(values: Sequence[float], reduction: str) -> str:
    if reduction == "none":
        return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
    return f"{values[0]:.4f}"


def _finish(manual: list[float], library: list[float], call: str, reduction: str) -> None:
    click.echo(f"\nloss ({reduction}) = {_result_line(manual, reduction)}")
    same = _agree(manual, library)
    click.echo(
        f"{call} = {_result_line(library, reduction)}"
        + ("   (agrees with the arithmetic above)" if same else "   DISAGREES")
    )
    if not same:
        click.echo("crossent's result differs from the formula: please report this", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# multi-class


def explain_multiclass(
    rows: list[list[float]],
    from_logits: bool,
    targets: list[int],
    weight: list[float] | None,
    eps: float,
    ignore_index: int,
    reduction: str,
) -> None:
    """Print the multi-class loss of `rows` (probabilities, or logits if `from_logits`) term by term.

    `rows` is (N, C), `targets` N class indices (or `ignore_index`), `weight` C class weights or
    None, `eps` the label smoothing. The inputs are valid (the command checked them). Ends with
    crossent's float64 result beside the arithmetic's, and exits 1 if the two disagree.
    """
    import torch

    import crossent

    C = len(rows[0])
    w = weight or [1.0] * C
    click.echo(
        "Cross-entropy of a predicted distribution p over C classes against the true class t:"
    )
    click.echo("  loss = -log p[t]   (the one-hot target keeps only the true class's term)")
    if from_logits:
        click.echo("  from logits z, softmax first: p_c = exp(z_c) / sum_j exp(z_j)")
    if weight or eps:
        click.echo(
            "  general row loss: l = sum_c w_c * q_c * (-log p_c), q_c = (1 - eps) * [c == t] + eps / C"
        )
    if eps:
        click.echo(
            f"  label smoothing eps = {eps}: q_c = {1 - eps:.4f} + {eps / C:.4f} for c = t, "
            f"{eps / C:.4f} otherwise"
        )

    losses: list[float] = []
    denominator = 0.0
    probs_rows = []
    for i, (row, t) in enumerate(zip(rows, targets), start=1):
        if from_logits:
            m = max(row)  # exp(z - max z): same softmax, no overflow
            e = [math.exp(z - m) for z in row]
            total = sum(e)
            p = [v / total for v in e]
            logp = [z - m - math.log(total) for z in row]
        else:
            p = list(row)
            logp = [_log(v) for v in p]
        probs_rows.append(p)
        click.echo(
            f"\nrow {i}, target class {t}"
            + (" (= ignore_index: skipped)" if t == ignore_index else "")
        )
        head = "  class" + ("       z  exp(z-m)" if from_logits else "") + "       p   -log p"
        if weight:
            head += "       w"
        if eps:
            head += "       q"
        if weight or eps:
            head += "  w*q*(-log p)"
        click.echo(head)
        terms = []
        for c in range(C):
            q = (1 - eps) * (c == t) + eps / C
            term = 0.0 if q == 0 else w[c] * q * -logp[c]
            terms.append(term)
            line = f"  {c:>5}"
            if from_logits:
                line += _f(row[c]) + _f(e[c], 10)
            line += _f(p[c]) + _f(-logp[c], 9)
            if weight:
                line += _f(w[c])
            if eps:
                line += _f(q)
            if weight or eps:
                line += _f(term, 14)
            if c == t:
                line += "   <- target"
            click.echo(line)
        if from_logits:
            click.echo(
                f"  m = max z = {m:.4f}, sum exp(z - m) = {total:.4f}, "
                f"log sum exp(z) = {m + math.log(total):.4f}"
            )
        if t == ignore_index:
            click.echo(
                f"  target = ignore_index ({ignore_index}): loss 0, and left out of the mean's "
                "denominator"
            )
            losses.append(0.0)
            continue
        if not eps and not weight:
            if from_logits:
                click.echo(
                    f"  loss = -log p[{t}] = log sum exp(z) - z[{t}] = "
                    f"{m + math.log(total):.4f} - {row[t]:.4f} = {-logp[t]:.4f}"
                )
            else:
                click.echo(f"  loss = -log p[{t}] = -log({p[t]:.4f}) = {-logp[t]:.4f}")
        else:
            click.echo(
                f"  loss = sum of the last column = {sum(terms):.4f}"
                + (f" (= w[{t}] * -log p[{t}] = {w[t]:.4f} * {-logp[t]:.4f})" if not eps else "")
            )
        losses.append(sum(terms))
        denominator += w[t]

    if reduction == "mean":
        manual = [sum(losses) / denominator if denominator else math.nan]
        counted = sum(1 for t in targets if t != ignore_index)
        if weight:
            click.echo(
                f"\n'mean' with class weights divides by the weights of the counted targets, "
                f"sum w[t] = {denominator:.4f}, not by the number of rows ({counted})"
            )
            if counted == 1:
                click.echo(
                    "  with a single row the weight cancels; it matters across rows and for 'sum'"
                )
        elif counted != len(targets):
            click.echo(
                f"\n'mean' divides by the {counted} counted row(s), not by all {len(targets)}"
            )
        if denominator == 0:
            click.echo("  every target is ignored: 0 / 0 = nan, as in torch")
    elif reduction == "sum":
        manual = [sum(losses)]
    else:
        manual = losses

    t_in = torch.tensor([[v for v in row] for row in rows], dtype=torch.float64)
    t_tgt = torch.tensor(targets, dtype=torch.int64)
    t_w = torch.tensor(weight, dtype=torch.float64) if weight else None
    kwargs = {"weight": t_w, "ignore_index": ignore_index, "reduction": reduction}
    wtxt = ", weight=w" if weight else ""
    if from_logits:
        out = crossent.cross_entropy(t_in, t_tgt, label_smoothing=eps, **kwargs)
        call = f"crossent.cross_entropy(z, t{wtxt}, label_smoothing={eps}, reduction='{reduction}')"
    elif eps:
        # log_softmax(log p) = log p when p sums to 1, so cross_entropy on log p is CE on p
        out = crossent.cross_entropy(torch.log(t_in), t_tgt, label_smoothing=eps, **kwargs)
        call = f"crossent.cross_entropy(log p, t{wtxt}, label_smoothing={eps}, reduction='{reduction}')"
    else:
        out = crossent.nll_loss(torch.log(t_in), t_tgt, **kwargs)
        call = f"crossent.nll_loss(log p, t{wtxt}, reduction='{reduction}')"
    _finish(manual, out.reshape(-1).tolist(), call, reduction)


# ---------------------------------------------------------------------------------------------
# binary


def explain_binary(
    values: list[float],
    from_logits: bool,
    ys: list[float],
    weight: list[float] | None,
    pos_weight: float | None,
    eps: float,
    reduction: str,
) -> None:
    """Print the binary loss of `values` (probabilities of class 1, or logits) term by term.

    `values` and `ys` (labels in [0, 1]) have one entry per row, `weight` one per row or a single
    one for every row, `pos_weight` applies to logits only. The inputs are valid (the command
    checked them). Ends with crossent's float64 result beside the arithmetic's, and exits 1 if the
    two disagree.
    """
    import torch

    import crossent

    n = len(values)
    v = weight if weight else [1.0] * n
    if len(v) == 1 and n > 1:
        v = v * n
    pw = 1.0 if pos_weight is None else pos_weight
    click.echo(
        "Binary cross-entropy of the predicted probability p of class 1 against the label y:"
    )
    click.echo("  loss = -[y * log(p) + (1 - y) * log(1 - p)]")
    if from_logits:
        click.echo("  from a logit x, sigmoid first: p = 1 / (1 + exp(-x))")
    if pos_weight is not None:
        click.echo(f"  pos_weight pw = {pw}: loss = -[pw * y * log(p) + (1 - y) * log(1 - p)]")
    if weight:
        click.echo("  weight v: each row's loss is multiplied by its v")
    if eps:
        click.echo(f"  label smoothing eps = {eps}: y becomes y * (1 - eps) + eps / 2")
    losses = []
    soft = []
    for i, (x, y) in enumerate(zip(values, ys), start=1):
        ys_ = y * (1 - eps) + eps / 2
        soft.append(ys_)
        if from_logits:
            p = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
            # log sigmoid without cancellation: log p = -log(1 + exp(-x))
            logp = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
            log1mp = logp - x
        else:
            p = x
            logp, log1mp = max(_log(p), -100.0), max(_log(1 - p), -100.0)  # torch clamps at -100
        a, b = pw * ys_ * logp + 0.0, (1 - ys_) * log1mp + 0.0  # + 0.0: no '-0.0000'
        loss = -v[i - 1] * (a + b)
        losses.append(loss)
        click.echo(
            f"\nrow {i}: y = {y:g}"
            + (f" -> {ys_:.4f}" if eps else "")
            + (f", x = {x:.4f}, p = sigmoid(x) = {p:.4f}" if from_logits else f", p = {p:.4f}")
        )
        pw_name, pw_value = ("pw * ", f"{pw:g} * ") if pos_weight is not None else ("", "")
        v_value = f"{v[i - 1]:g} * " if weight else ""
        click.echo(f"  {pw_name}y * log(p) = {pw_value}{ys_:.4f} * {logp:.4f} = {a:.4f}")
        click.echo(f"  (1 - y) * log(1 - p) = {1 - ys_:.4f} * {log1mp:.4f} = {b:.4f}")
        click.echo(f"  loss = {v_value}-({a:.4f} + {b:.4f}) = {loss:.4f}")
    manual = {"mean": [sum(losses) / n], "sum": [sum(losses)], "none": losses}[reduction]
    if reduction == "mean" and n > 1:
        click.echo(f"\n'mean' divides by the number of rows ({n})")

    t_x = torch.tensor(values, dtype=torch.float64)
    t_y = torch.tensor(soft, dtype=torch.float64)
    t_v = torch.tensor(v, dtype=torch.float64) if weight else None
    wtxt = ", weight=v" if weight else ""
    if from_logits:
        t_pw = torch.tensor([pw], dtype=torch.float64) if pos_weight is not None else None
        out = crossent.binary_cross_entropy_with_logits(
            t_x, t_y, weight=t_v, pos_weight=t_pw, reduction=reduction
        )
        call = (
            f"crossent.binary_cross_entropy_with_logits(x, y{wtxt}"
            f"{', pos_weight=pw' if pos_weight is not None else ''}, reduction='{reduction}')"
        )
    else:
        out = crossent.binary_cross_entropy(t_x, t_y, weight=t_v, reduction=reduction)
        call = f"crossent.binary_cross_entropy(p, y{wtxt}, reduction='{reduction}')"
    _finish(manual, out.reshape(-1).tolist(), call, reduction)
