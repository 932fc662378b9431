"""`crossent explain`: the loss of a few numbers, term by term, as the first seed works it out.

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

from ._errors import CliError


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a comma-separated list of numbers; write e.g. 0.2,0.7,0.1"
        )
    if not values:
        raise CliError(f"{option} is empty; give comma-separated numbers, e.g. 0.2,0.7,0.1")
    if not all(math.isfinite(v) for v in values):
        raise CliError(f"{option} {text!r} has a non-finite number; give finite numbers")
    return values


def _rows(text: str, option: str) -> list[list[float]]:
    rows = [_numbers(r, option) for r in text.split(";") if r.strip()]
    if not rows:
        raise CliError(f"{option} is empty; give comma-separated numbers, rows separated by ';'")
    if len({len(r) for r in rows}) != 1:
        raise CliError(
            f"the rows of {option} have different lengths; give every row one value per class"
        )
    if len(rows[0]) < 2:
        raise CliError(f"{option} needs at least two classes per row; give one value per class")
    return rows


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


def _explain_multiclass(
    rows: list[list[float]],
    from_logits: bool,
    targets: list[int],
    weight: list[float] | None,
    eps: float,
    ignore_index: int,
    reduction: str,
) -> None:
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


def _explain_binary(
    values: list[float],
    from_logits: bool,
    ys: list[float],
    weight: list[float] | None,
    pos_weight: float | None,
    eps: float,
    reduction: str,
) -> None:
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


# ---------------------------------------------------------------------------------------------


@click.command(short_help="The loss step by step: formula, each term, result.")
@click.option("--probs", help="Predicted probabilities, one per class: 0.2,0.7,0.1 (rows: ';').")
@click.option("--logits", help="Raw scores (logits), one per class: 1.0,2.0,0.1 (rows: ';').")
@click.option("--target", help="True class index per row, counting from 0: 1 (rows: 1,0).")
@click.option("--binary", is_flag=True, help="Binary cross-entropy: use --p or --logit, and --y.")
@click.option("--p", "p_text", help="Binary: probability of class 1 per row: 0.9 (rows: 0.9,0.2).")
@click.option("--logit", "logit_text", help="Binary: logit per row: 2.0 (sigmoid gives p).")
@click.option("--y", "y_text", help="Binary: label per row, 0 or 1 (soft labels in [0, 1] too).")
@click.option("--weight", help="Multi-class: a weight per class (w). Binary: a weight per row (v).")
@click.option("--pos-weight", type=float, help="Binary with --logit: weight of the positive term.")
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="eps: mixes the one-hot target with the uniform distribution.",
)
@click.option(
    "--ignore-index",
    type=int,
    default=-100,
    show_default=True,
    help="Multi-class: rows with this target count for nothing.",
)
@click.option(
    "--reduction", type=click.Choice(["mean", "sum", "none"]), default="mean", show_default=True
)
def explain(
    probs,
    logits,
    target,
    binary,
    p_text,
    logit_text,
    y_text,
    weight,
    pos_weight,
    label_smoothing,
    ignore_index,
    reduction,
) -> None:
    """Work out the cross-entropy loss step by step: formula, every term, the result.

    Each term is computed from the formula with plain arithmetic, then crossent's functional API
    computes the same loss, and both results are printed.

    \b
    Examples (the first seed's numbers):
      crossent explain --probs 0.2,0.7,0.1 --target 1          -log(0.7) = 0.3567
      crossent explain --binary --p 0.9 --y 1                   -log(0.9) = 0.1054
      crossent explain --logits 1.0,2.0,0.1 --target 1          softmax first: 0.4170
      crossent explain --binary --logit 2.0 --y 1               sigmoid first: 0.1269
    \b
    Options and their effect:
      crossent explain --logits 1,2,0.1 --target 1 --label-smoothing 0.1
      crossent explain --probs "0.2,0.7,0.1;0.6,0.3,0.1" --target 1,0 --weight 1,2,1
      crossent explain --probs "0.2,0.7,0.1;0.6,0.3,0.1" --target 1,0 --ignore-index 0
    """
    if binary:
        if probs or logits or target is not None:
            raise CliError(
                "--binary takes --p or --logit and --y, not --probs/--logits/--target; "
                "drop --binary for the multi-class loss"
            )
        if (p_text is None) == (logit_text is None):
            raise CliError("--binary needs exactly one of --p (probabilities) or --logit; give one")
        if y_text is None:
            raise CliError("--binary needs the labels, e.g. --y 1; add --y")
        values = _numbers(p_text or logit_text, "--p" if p_text else "--logit")
        ys = _numbers(y_text, "--y")
        if len(ys) != len(values):
            raise CliError(
                f"--y has {len(ys)} labels for {len(values)} rows; give one label per row"
            )
        if any(not 0 <= y <= 1 for y in ys):
            raise CliError("--y labels must lie in [0, 1] (1 = class 1); fix the labels")
        if p_text is not None and any(not 0 <= p <= 1 for p in values):
            raise CliError(
                "--p values are probabilities and must lie in [0, 1]; use --logit for raw scores"
            )
        if pos_weight is not None and p_text is not None:
            raise CliError(
                "--pos-weight is an option of BCE-with-logits; give --logit instead of --p"
            )
        v = _numbers(weight, "--weight") if weight else None
        if v is not None and len(v) not in (1, len(values)):
            raise CliError(f"--weight has {len(v)} values for {len(values)} rows; give one per row")
        _explain_binary(values, p_text is None, ys, v, pos_weight, label_smoothing, reduction)
        return

    if p_text or logit_text or y_text or pos_weight is not None:
        raise CliError("--p, --logit, --y and --pos-weight belong to the binary loss; add --binary")
    if (probs is None) == (logits is None):
        raise CliError(
            "give exactly one of --probs (probabilities) or --logits (raw scores), "
            "e.g. --probs 0.2,0.7,0.1 --target 1"
        )
    rows = _rows(probs or logits, "--probs" if probs else "--logits")
    C = len(rows[0])
    if probs:
        for i, r in enumerate(rows, start=1):
            if any(not 0 <= x <= 1 for x in r):
                raise CliError(
                    f"row {i} of --probs has a value outside [0, 1]; "
                    "give probabilities, or raw scores with --logits"
                )
            if abs(sum(r) - 1) > 1e-3:
                raise CliError(
                    f"row {i} of --probs sums to {sum(r):.4g}, not 1; "
                    "give probabilities that sum to 1, or raw scores with --logits"
                )
    if target is None:
        raise CliError("--target is required: the true class index of each row, e.g. --target 1")
    try:
        targets = [int(t) for t in target.replace(" ", "").split(",") if t]
    except ValueError:
        raise CliError(f"--target {target!r} is not a list of class indices; write e.g. 1 or 1,0")
    if len(targets) != len(rows):
        raise CliError(
            f"--target has {len(targets)} classes for {len(rows)} rows; give one per row"
        )
    for t in targets:
        if t != ignore_index and not 0 <= t < C:
            raise CliError(
                f"--target {t} is not a class index in 0..{C - 1}; "
                "count classes from 0 (the seed's class 2 of 3 is index 1)"
            )
    w = _numbers(weight, "--weight") if weight else None
    if w is not None and (len(w) != C or any(x < 0 for x in w)):
        raise CliError(f"--weight needs {C} non-negative values, one per class; fix the list")
    _explain_multiclass(
        rows, logits is not None, targets, w, label_smoothing, ignore_index, reduction
    )
