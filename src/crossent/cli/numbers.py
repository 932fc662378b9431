"""Numbers as people write them in tables: thousands separators, currency and percent signs.

A text column is read as numbers when its values, stripped of surrounding blanks, all match one
pattern (the few missing-value markers `columns` allows aside):

    [sign] [currency] integer [decimal mark + digits] [%] [currency]      e.g. -$1,234.50  12.5 %
    integer: digits, or groups of three after a 1-3 digit head: 197,608  1 234 567  1'000

with ONE thousands separator and ONE decimal mark for the whole column, chosen from the pairs
below, the file's own decimal mark first (`read`) (a CSV with decimal commas reads '1.234,5'). The value is
the number written; a percent sign divides it by 100 ('12.5%' = 0.125), so '50%' and '0.5' mean the
same. Currency symbols are dropped (a column mixing currencies is still one column of amounts:
converting them is the user's business, and the notice shows what was read).

The chosen `TextNumbers` is stored in the model's preprocessing, so predict reads new rows the
same way. pandas is imported inside the functions.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CURRENCY = "$€£¥₹₩₽¢₺₫₪฿"
# (thousands separator, decimal mark): ' ' and NBSP / narrow NBSP as French and SI write them,
# "'" as Swiss tables do
SEPARATORS_POINT = ((",", "."), (" ", "."), ("\u00a0", "."), ("\u202f", "."), ("'", "."))
SEPARATORS_COMMA = ((".", ","), (" ", ","), ("\u00a0", ","), ("\u202f", ","), ("'", ","))


@dataclass(frozen=True)
class TextNumbers:
    """How one column writes its numbers (stored as a dict in the preprocessing JSON)."""

    thousands: str
    decimal: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def pattern(self) -> re.Pattern[str]:
        t, d = re.escape(self.thousands), re.escape(self.decimal)
        cur = f"[{re.escape(CURRENCY)}]"
        number = rf"(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)(?:{d}\d+)?|{d}\d+"
        return re.compile(rf"^(?:[+-]?\s*{cur}?\s*|{cur}\s*[+-]?\s*)(?:{number})\s*%?\s*{cur}?$")


def parse(text: pd.Series, fmt: TextNumbers) -> pd.Series:
    """float64 values of `text` (strings, NaN for missing) written as `fmt` says; NaN where a
    value does not match the pattern (the caller reports those)."""
    import numpy as np
    import pandas as pd

    s = text.astype("string").str.strip()
    ok = s.str.fullmatch(fmt.pattern()).fillna(False).astype(bool)
    percent = s.str.contains("%", regex=False).fillna(False).astype(bool)
    body = s.str.replace(rf"[{re.escape(CURRENCY)}%\s]", "", regex=True)
    body = body.str.replace(fmt.thousands, "", regex=False)
    if fmt.decimal != ".":
        body = body.str.replace(fmt.decimal, ".", regex=False)
    values = pd.to_numeric(body.where(ok), errors="coerce").astype("float64")
    return values.where(~percent, values / 100).astype(np.float64)


def example(text: pd.Series, values: pd.Series, fmt: TextNumbers) -> str:
    """ "'197,608' = 197608": a value that needed the format (a separator, a sign), non-zero."""
    pairs = [(str(r).strip(), v) for r, v in zip(text.tolist(), values.tolist()) if v == v]
    marks = (fmt.thousands, "%", *CURRENCY)
    shown = [(r, v) for r, v in pairs if v != 0 and any(m in r for m in marks)] or pairs
    return f"{shown[0][0]!r} = {shown[0][1]:.10g}" if shown else ""


def _proves_decimal(text: pd.Series, dec: str) -> bool:
    """Some value shows `dec` as a decimal mark: followed by other than exactly three digits
    ('2,5', '3,14159'). Without one, '1,234' in a '.'-decimal file stays a thousand and more,
    never silently 1.234."""
    pattern = rf"{re.escape(dec)}(?:\d{{1,2}}|\d{{4,}})\s*%?\s*[{re.escape(CURRENCY)}]?$"
    return bool(text.str.contains(pattern, regex=True).fillna(False).any())


def read(
    text: pd.Series, decimal: str = ".", max_words: int = 3
) -> tuple[TextNumbers | None, pd.Series]:
    """(format, float64 values) of `text` (non-missing strings): the reading that leaves the
    fewest values unread (NaN), plain numbers first, then the (thousands, decimal) pairs; the
    caller decides whether what is left are missing-value markers or words. More than
    `max_words` distinct values with letters end the search at once: no reading makes such a
    column numeric (free text costs one pass, not eleven)."""
    import pandas as pd

    s = text.astype("string").str.strip()
    best: tuple[TextNumbers | None, pd.Series] = (None, pd.to_numeric(s, errors="coerce"))
    words = s[best[1].isna() & s.str.contains(r"[^\W\d_]", regex=True).fillna(False)]
    if words.nunique() > max_words:
        return best[0], best[1].astype("float64")
    # the file's own decimal mark first: in a '.'-decimal file '1,234' is a thousand and more
    pairs = (
        SEPARATORS_COMMA + SEPARATORS_POINT
        if decimal == ","
        else SEPARATORS_POINT + SEPARATORS_COMMA
    )
    for thousands, dec in pairs:
        if int(best[1].isna().sum()) == 0:
            break
        fmt = TextNumbers(thousands, dec)
        if dec != decimal and not _proves_decimal(s, dec):
            continue
        values = parse(s, fmt)
        if int(values.isna().sum()) < int(best[1].isna().sum()):
            best = (fmt, values)
    return best[0], best[1].astype("float64")
