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
from dataclasses import dataclass

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


@dataclass
class _Multi:
    """One multi-class explanation: (N, C) `rows` (probabilities, or logits if `from_logits`),
    per row a class index (`targets`) or a distribution (`dists`, soft targets), class weights
    `w`, smoothing `eps`."""

    rows: list[list[float]]
    from_logits: bool
    targets: list[int] | None
    dists: list[list[float]] | None
    weight: list[float] | None
    eps: float
    ignore_index: int
    reduction: str

    @property
    def C(self) -> int:
        return len(self.rows[0])

    @property
    def w(self) -> list[float]:
        return self.weight or [1.0] * self.C

    def q(self, i: int) -> list[float]:
        """Row i's smoothed target distribution: (1 - eps) * one-hot or dist + eps / C."""
        C, eps = self.C, self.eps
        base = self.dists[i] if self.dists else [float(c == self.targets[i]) for c in range(C)]
        return [(1 - eps) * b + eps / C for b in base]


def explain_multiclass(
    rows: list[list[float]],
    from_logits: bool,
    targets: list[int] | None,
    weight: list[float] | None,
    eps: float,
    ignore_index: int,
    reduction: str,
    dists: list[list[float]] | None = None,
) -> None:
    """Print the multi-class loss of `rows` (probabilities, or logits if `from_logits`) term by term.

    `rows` is (N, C); `targets` N class indices (or `ignore_index`), or None with `dists`, N
    target distributions (soft targets, torch's class-probability targets); `weight` C class
    weights or None, `eps` the label smoothing. The inputs are valid (the command checked them).
    Ends with crossent's float64 result beside the arithmetic's, and exits 1 if they disagree.
    """
    m = _Multi(rows, from_logits, targets, dists, weight, eps, ignore_index, reduction)
    _multi_header(m)
    losses, denominator = [], 0.0
    for i in range(len(rows)):
        loss, counted = _multi_row(m, i)
        losses.append(loss)
        denominator += counted
    manual = _multi_reduce(m, losses, denominator)
    out, call = _multi_library(m)
    _finish(manual, out, call, reduction)


def _multi_header(m: _Multi) -> None:
    what = "the true class t" if m.dists is None else "a target distribution q (soft target)"
    click.echo(f"Cross-entropy of a predicted distribution p over C classes against {what}:")
    if m.dists is None:
        click.echo("  loss = -log p[t]   (the one-hot target keeps only the true class's term)")
    else:
        click.echo("  loss = -sum_c q_c * log p_c   (every class with q_c > 0 contributes)")
    if m.from_logits:
        click.echo("  from logits z, softmax first: p_c = exp(z_c) / sum_j exp(z_j)")
    C, eps = m.C, m.eps
    if m.dists is None and (m.weight or eps):
        click.echo(
            "  general row loss: l = sum_c w_c * q_c * (-log p_c), q_c = (1 - eps) * [c == t] + eps / C"
        )
        if eps:
            click.echo(
                f"  label smoothing eps = {eps}: q_c = {1 - eps:.4f} + {eps / C:.4f} for c = t, "
                f"{eps / C:.4f} otherwise"
            )
    elif m.weight or eps:
        click.echo("  general row loss: l = sum_c w_c * q_c * (-log p_c)")
        if eps:
            click.echo(f"  label smoothing eps = {eps}: q_c becomes (1 - eps) * q_c + eps / C")


def _softmax(
    row: list[float], from_logits: bool
) -> tuple[list[float], list[float], list[float], float, float]:
    """(p, log p, exp(z - m), m, sum exp(z - m)); for probabilities the last three are unused."""
    if not from_logits:
        return list(row), [_log(v) for v in row], [], 0.0, 0.0
    m = max(row)  # exp(z - max z): same softmax, no overflow
    e = [math.exp(z - m) for z in row]
    total = sum(e)
    return [v / total for v in e], [z - m - math.log(total) for z in row], e, m, total


def _multi_row(m: _Multi, i: int) -> tuple[float, float]:
    """Print row i's table and loss; (its loss, what it adds to 'mean''s denominator)."""
    row, t = m.rows[i], (m.targets[i] if m.targets is not None else None)
    p, logp, e, mx, total = _softmax(row, m.from_logits)
    q, w, shown = m.q(i), m.w, bool(m.weight or m.eps or m.dists)
    ignored = t is not None and t == m.ignore_index
    target = (
        f"target class {t}"
        if t is not None
        else "target distribution " + ", ".join(f"{v:g}" for v in m.dists[i])
    )
    click.echo(f"\nrow {i + 1}, {target}" + (" (= ignore_index: skipped)" if ignored else ""))
    head = "  class" + ("       z  exp(z-m)" if m.from_logits else "") + "       p   -log p"
    head += ("       w" if m.weight else "") + ("       q" if (m.eps or m.dists) else "")
    click.echo(head + ("  w*q*(-log p)" if shown else ""))
    terms = [0.0 if q[c] == 0 else w[c] * q[c] * -logp[c] for c in range(m.C)]
    for c in range(m.C):
        line = f"  {c:>5}" + (_f(row[c]) + _f(e[c], 10) if m.from_logits else "")
        line += _f(p[c]) + _f(-logp[c], 9) + (_f(w[c]) if m.weight else "")
        line += (_f(q[c]) if (m.eps or m.dists) else "") + (_f(terms[c], 14) if shown else "")
        click.echo(line + ("   <- target" if c == t else ""))
    if m.from_logits:
        click.echo(
            f"  m = max z = {mx:.4f}, sum exp(z - m) = {total:.4f}, "
            f"log sum exp(z) = {mx + math.log(total):.4f}"
        )
    if ignored:
        click.echo(
            f"  target = ignore_index ({m.ignore_index}): loss 0, and left out of the mean's "
            "denominator"
        )
        return 0.0, 0.0
    if not shown and m.from_logits:
        click.echo(
            f"  loss = -log p[{t}] = log sum exp(z) - z[{t}] = "
            f"{mx + math.log(total):.4f} - {row[t]:.4f} = {-logp[t]:.4f}"
        )
    elif not shown:
        click.echo(f"  loss = -log p[{t}] = -log({p[t]:.4f}) = {-logp[t]:.4f}")
    else:
        simple = t is not None and not m.eps
        click.echo(
            f"  loss = sum of the last column = {sum(terms):.4f}"
            + (f" (= w[{t}] * -log p[{t}] = {w[t]:.4f} * {-logp[t]:.4f})" if simple else "")
        )
    return sum(terms), (w[t] if t is not None else 1.0)


def _multi_reduce(m: _Multi, losses: list[float], denominator: float) -> list[float]:
    """The reduction, with what 'mean' divides by; the manual result (a list of one or N)."""
    if m.reduction == "sum":
        return [sum(losses)]
    if m.reduction == "none":
        return losses
    if m.dists is not None:
        if len(losses) > 1:
            click.echo(
                f"\n'mean' with target distributions divides by the number of rows "
                f"({len(losses)}), class weights or not (torch's rule)"
            )
        return [sum(losses) / len(losses)]
    counted = sum(1 for t in m.targets if t != m.ignore_index)
    if m.weight:
        click.echo(
            f"\n'mean' with class weights divides by the weights of the counted targets, "
            f"sum w[t] = {denominator:.4f}, not by the number of rows ({counted})"
        )
        if counted == 1:
            click.echo(
                "  with a single row the weight cancels; it matters across rows and for 'sum'"
            )
    elif counted != len(m.targets):
        click.echo(f"\n'mean' divides by the {counted} counted row(s), not by all {len(m.targets)}")
    if denominator == 0:
        click.echo("  every target is ignored: 0 / 0 = nan, as in torch")
    return [sum(losses) / denominator if denominator else math.nan]


def _multi_library(m: _Multi) -> tuple[list[float], str]:
    """crossent's float64 result for the same inputs, and the call that gave it."""
    import torch

    import crossent

    t_in = torch.tensor(m.rows, dtype=torch.float64)
    if m.dists is not None:
        t_tgt, tname = torch.tensor(m.dists, dtype=torch.float64), "q"
    else:
        t_tgt, tname = torch.tensor(m.targets, dtype=torch.int64), "t"
    t_w = torch.tensor(m.weight, dtype=torch.float64) if m.weight else None
    kwargs = {"weight": t_w, "ignore_index": m.ignore_index, "reduction": m.reduction}
    wtxt, eps, red = (", weight=w" if m.weight else ""), m.eps, m.reduction
    if m.from_logits:
        out = crossent.cross_entropy(t_in, t_tgt, label_smoothing=eps, **kwargs)
        call = f"crossent.cross_entropy(z, {tname}{wtxt}, label_smoothing={eps}, reduction='{red}')"
    elif eps or m.dists is not None:
        # log_softmax(log p) = log p when p sums to 1, so cross_entropy on log p is CE on p
        out = crossent.cross_entropy(torch.log(t_in), t_tgt, label_smoothing=eps, **kwargs)
        call = f"crossent.cross_entropy(log p, {tname}{wtxt}, label_smoothing={eps}, reduction='{red}')"
    else:
        out = crossent.nll_loss(torch.log(t_in), t_tgt, **kwargs)
        call = f"crossent.nll_loss(log p, t{wtxt}, reduction='{red}')"
    return out.reshape(-1).tolist(), call


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

    out, call = _binary_library(values, from_logits, soft, weight and v, pos_weight, pw, reduction)
    _finish(manual, out, call, reduction)


def _binary_library(
    values: list[float],
    from_logits: bool,
    soft: list[float],
    v: list[float] | None,
    pos_weight: float | None,
    pw: float,
    reduction: str,
) -> tuple[list[float], str]:
    """crossent's float64 binary loss for the same inputs, and the call that gave it."""
    import torch

    import crossent

    t_x = torch.tensor(values, dtype=torch.float64)
    t_y = torch.tensor(soft, dtype=torch.float64)
    t_v = torch.tensor(v, dtype=torch.float64) if v else None
    wtxt = ", weight=v" if v else ""
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
    return out.reshape(-1).tolist(), call
