"""Reading a CSV file as its author wrote it: encoding from the BOM, delimiter and decimal sniffed.

    encoding   a byte-order mark decides (UTF-8, UTF-16 or UTF-32, as Excel's "CSV UTF-8" and
               "Unicode text" exports write them); without one the file must be UTF-8
    delimiter  the one of , ; TAB | that splits the first rows into the same number (> 1) of
               fields, most often; ties go to the one giving more columns; --sep forces it
    decimal    ',' when the delimiter is not ',' and the sample's numbers use decimal commas
               ("3,5") but never decimal points (the European spreadsheet export)

`read_csv(path, sep, head, ...)` returns the frame and a `CsvFormat` saying what was found (for
`crossent data`); every problem is one `CliError` sentence. `readers` decides that a file is CSV
(or compressed CSV) and hands over its first bytes. pandas is imported inside the functions.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import pandas as pd

DELIMITERS = (",", ";", "\t", "|")
SEP_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}
SEP_HELP = (
    "Field delimiter (default: sniffed among comma, semicolon, tab and |); "
    "a character or comma, semicolon, tab, pipe."
)
SAMPLE_BYTES = 1 << 16  # the first 64 KiB decide; enough for ~50 rows of a wide table
SAMPLE_ROWS = 50
# (BOM, codec for the whole file): longest first, since UTF-32-LE's BOM starts with UTF-16-LE's
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
_DECIMAL_POINT = re.compile(r"^\s*[+-]?\d*\.\d+\s*$")


@dataclass(frozen=True)
class CsvFormat:
    encoding: str
    sep: str
    decimal: str
    sniffed: bool  # False when --sep forced the delimiter

    def describe(self) -> str:
        """'delimiter ';' (sniffed), decimal comma, utf-8-sig' for `crossent data`."""
        shown = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(self.sep, self.sep)
        parts = [f"delimiter {shown} ({'sniffed' if self.sniffed else '--sep'})"]
        if self.decimal != ".":
            parts.append("decimal comma")
        parts.append({"utf-8-sig": "UTF-8 with BOM"}.get(self.encoding, self.encoding.upper()))
        return ", ".join(parts)


def parse_sep(text: str | None) -> str | None:
    """--sep: None (sniff), a name (tab, semicolon, ...), '\\t', or one character."""
    if text is None:
        return None
    sep = SEP_NAMES.get(text.strip().lower(), text)
    if len(sep) != 1 or sep in '\r\n"':
        raise CliError(
            f"--sep {text!r} is not a single delimiter character; "
            "give one such as ';' or a name: comma, semicolon, tab, pipe"
        )
    return sep


def _encoding(head: bytes) -> str:
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return "utf-8"


def _sample_rows(text: str, sep: str, truncated: bool) -> list[list[str]]:
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=sep) if r]
    if truncated and len(rows) > 1:
        rows = rows[:-1]  # the sample may end inside the last row
    return rows[:SAMPLE_ROWS]


def sniff(text: str, truncated: bool = False) -> str:
    """The delimiter that splits the sample's rows into one consistent number (> 1) of fields.

    Score = (share of rows with the header's field count, that count). csv.Sniffer is not used:
    it guesses from character frequencies and picks ' ' or a letter on small numeric files.
    """
    best, best_score = ",", (0.0, 0)
    for sep in DELIMITERS:
        rows = _sample_rows(text, sep, truncated)
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows) / len(rows), width)
        if score > best_score:
            best, best_score = sep, score
    return best


def _decimal(text: str, sep: str, truncated: bool) -> str:
    if sep == ",":
        return "."
    cells = [c for r in _sample_rows(text, sep, truncated)[1:] for c in r]
    comma = any(_DECIMAL_COMMA.match(c) for c in cells)
    point = any(_DECIMAL_POINT.match(c) for c in cells)
    return "," if comma and not point else "."


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_csv(
    path: Path, sep: str | None, head: bytes, truncated: bool, compression: str | None = None
) -> tuple[pd.DataFrame, CsvFormat]:
    """(frame with stripped column names, the format found); a sentence for every problem.

    `head` is the file's first SAMPLE_BYTES (decompressed), `truncated` whether more follows;
    `compression` is pandas' name for the file's compression (None: plain text)."""
    import pandas as pd

    if not head.strip():
        raise CliError(f"'{path}' is empty; give a CSV file with a header row and data rows")
    encoding = _encoding(head)
    try:
        # an incremental decoder tolerates a sample cut inside a multi-byte character
        sample = codecs.getincrementaldecoder(encoding)().decode(head, final=not truncated)
    except UnicodeDecodeError as e:
        raise CliError(
            f"'{path}' is not UTF-8 text (byte {head[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8 (with or without a BOM) or as UTF-16 with a BOM"
        )
    chosen = sep or sniff(sample, truncated)
    fmt = CsvFormat(encoding, chosen, _decimal(sample, chosen, truncated), sniffed=sep is None)
    try:
        frame = pd.read_csv(
            path, sep=fmt.sep, decimal=fmt.decimal, encoding=fmt.encoding, compression=compression
        )
    except pd.errors.EmptyDataError:
        raise CliError(f"'{path}' is empty; give a CSV file with a header row and data rows")
    except UnicodeDecodeError as e:
        raise CliError(
            f"'{path}' is not {fmt.encoding.upper()} text past its first {SAMPLE_BYTES} bytes "
            f"({_first_line(e)}); save it as UTF-8"
        )
    except (pd.errors.ParserError, ValueError) as e:
        raise CliError(
            f"'{path}' could not be read as CSV ({_first_line(e)}); check that it is a CSV file"
        )
    if len(frame) == 0:
        raise CliError(f"'{path}' has a header but no data rows; add rows to the file")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, fmt
