"""Which kind of table a file is, and pandas' reader for it.

    CSV, TSV          `_csv` (encoding, delimiter and decimal mark found as a spreadsheet wrote them)
    compressed CSV    gzip, bz2, xz or a zip holding one file: by magic bytes, whatever the name
    Parquet           pandas.read_parquet (pyarrow)
    Excel .xlsx       pandas.read_excel (openpyxl): the first sheet, with a note when there are more
    JSON Lines, JSON  pandas.read_json: one object per line, or an array of records

The kind comes from the file's first bytes (magic numbers), then its name; nothing here parses a
format itself. Anything else (a PDF, an image, an old .xls, a database, a pickle, binary data) is
refused with one sentence: "crossent reads CSV, TSV, Parquet, Excel and JSON Lines; FILE looks
like ...". The readers are in the `cli` extra (pandas, pyarrow, openpyxl); a missing one is named
with the install command.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._csv import BOMS, SAMPLE_BYTES, CsvFormat, read_csv
from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

READS = "crossent reads CSV, TSV, Parquet, Excel and JSON Lines"
MODEL_SUFFIXES = {".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".safetensors"}
# first bytes -> what the file is (formats crossent does not read)
FOREIGN = (
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Excel .xls (or other Office 97-2003) file; save it as .xlsx or CSV",
    ),
    (b"SQLite format 3\x00", "an SQLite database; export the table as CSV"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file; export the table as CSV or Parquet"),
    (b"ARROW1", "an Arrow/Feather file; save it as Parquet"),
    (b"\x93NUMPY", "a NumPy array (.npy); save it as CSV with a header row"),
    (b"\x28\xb5\x2f\xfd", "Zstandard-compressed data; decompress it, or compress with gzip"),
    (b"Rar!", "a RAR archive; extract the table"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive; extract the table"),
    (b"\x80", "a pickle file, which can run code when loaded, so crossent never opens it"),
)
# magic bytes -> pandas' compression name, and the module that reads a sample of it
COMPRESSED = ((b"\x1f\x8b", "gzip", gzip), (b"BZh", "bz2", bz2), (b"\xfd7zXZ\x00", "xz", lzma))
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}


@dataclass(frozen=True)
class SourceFormat:
    """What a file turned out to be: its kind, the CSV details, its compression, a note."""

    kind: str  # "csv", "parquet", "excel", "json lines", "json", "dataframe", "built-in"
    csv: CsvFormat | None = None
    compression: str | None = None
    note: str | None = None  # e.g. the other sheets of a workbook

    @property
    def decimal(self) -> str:
        return self.csv.decimal if self.csv else "."

    def describe(self) -> str:
        """'delimiter comma (sniffed), UTF-8, gzip-compressed', 'Parquet', ... for `crossent data`."""
        text = (
            self.csv.describe()
            if self.csv
            else {"json lines": "JSON Lines"}.get(
                self.kind, self.kind.capitalize() if self.kind != "json" else "JSON"
            )
        )
        return text + (f", {self.compression}-compressed" if self.compression else "")


def read_table(path: Path, sep: str | None = None) -> tuple[pd.DataFrame, SourceFormat]:
    """The table in `path` and how it was read; one `CliError` sentence for every problem."""
    if not path.exists():
        raise CliError(
            f"no such file '{path}' and no built-in data set of that name; "
            "give the path of a CSV file or one of the names `crossent data` lists"
        )
    if path.is_dir():
        raise CliError(f"'{path}' is a folder, not a CSV file; give the path of a CSV file")
    if path.suffix.lower() in MODEL_SUFFIXES:
        raise CliError(f"'{path}' is a model file, not data; give a CSV file with --data")
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
        truncated = bool(f.read(1))
    if head.startswith(b"PAR1"):
        return normalised(_parquet(path)), SourceFormat("parquet")
    if head.startswith(b"PK\x03\x04"):
        return _zip(path, sep)
    for magic, compression, module in COMPRESSED:
        if head.startswith(magic):
            with module.open(path, "rb") as f:
                inner = f.read(SAMPLE_BYTES)
                more = bool(f.read(1))
            return _text(path, sep, inner, more, compression)
    _refuse_foreign(path, head)
    return _text(path, sep, head, truncated, None)


def _text(
    path: Path, sep: str | None, head: bytes, truncated: bool, compression: str | None
) -> tuple[pd.DataFrame, SourceFormat]:
    """CSV / TSV, or JSON when the text starts with '{' or '[' (or the name says .json)."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    stem = path.name.lower().removesuffix(f".{compression}" if compression else "")
    if start in (b"{", b"[") or Path(stem).suffix in JSON_SUFFIXES:
        frame, kind = _json(path, start == b"[", compression)
        return normalised(frame), SourceFormat(kind, compression=compression)
    if b"\x00" in head and not head.startswith(tuple(bom for bom, _ in BOMS)):  # UTF-16/32
        offset = head.index(b"\x00")
        raise CliError(f"{READS}; '{path}' looks like binary data (a 0x00 byte at offset {offset})")
    frame, fmt = read_csv(path, sep, head, truncated, compression)
    return frame, SourceFormat("csv", csv=fmt, compression=compression)


def _refuse_foreign(path: Path, head: bytes) -> None:
    for magic, what in FOREIGN:
        if head.startswith(magic):
            raise CliError(f"{READS}; '{path}' looks like {what}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _missing_reader(e: ImportError, what: str, package: str) -> CliError:
    return CliError(
        f"reading {what} needs {package}, which is not installed ({_first_line(e)}); install "
        "the command line's dependencies with: pip install 'crossent[cli]'"
    )


def _parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except ImportError as e:
        raise _missing_reader(e, "Parquet files", "pyarrow")
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CliError(f"'{path}' could not be read as Parquet ({_first_line(e)}); check the file")


def _zip(path: Path, sep: str | None) -> tuple[pd.DataFrame, SourceFormat]:
    """An Excel workbook (a zip with xl/), or a zip archive holding one text table."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if any(n.startswith("xl/") for n in names):
                return _excel(path)
            if "mimetype" in names and b"opendocument" in z.read("mimetype"):
                raise CliError(
                    f"{READS}; '{path}' looks like an OpenDocument file; save it as .xlsx or CSV"
                )
            if any(n.startswith("word/") for n in names):
                raise CliError(f"{READS}; '{path}' looks like a Word document")
            if len(names) != 1:
                raise CliError(
                    f"{READS}; '{path}' looks like a zip archive of {len(names)} files; "
                    "compress one table per zip (or use gzip)"
                )
            with z.open(names[0]) as f:
                head = f.read(SAMPLE_BYTES)
                more = bool(f.read(1))
    except zipfile.BadZipFile as e:
        raise CliError(f"'{path}' is a damaged zip file ({_first_line(e)}); check the file")
    _refuse_foreign(path, head)
    return _text(path, sep, head, more, "zip")


def _excel(path: Path) -> tuple[pd.DataFrame, SourceFormat]:
    import pandas as pd

    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            sheets = [str(s) for s in book.sheet_names]
            frame = pd.read_excel(book, sheet_name=sheets[0])
    except ImportError as e:
        raise _missing_reader(e, "Excel files", "openpyxl")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CliError(f"'{path}' could not be read as an Excel workbook ({_first_line(e)})")
    frame = frame.dropna(axis=1, how="all").dropna(axis=0, how="all")  # formatted empty cells
    if len(frame) == 0:
        raise CliError(f"'{path}' has a header but no data rows in sheet '{sheets[0]}'; add rows")
    note = None
    if len(sheets) > 1:
        others = ", ".join(repr(s) for s in sheets[1:4]) + (" ..." if len(sheets) > 4 else "")
        note = f"note: read the first sheet '{sheets[0]}' of {len(sheets)} (not {others})"
    return normalised(frame), SourceFormat("excel", note=note)


def _json(path: Path, array: bool, compression: str | None) -> tuple[pd.DataFrame, str]:
    """JSON Lines (one object per line), or a JSON array of records / an object of columns."""
    import pandas as pd

    attempts = [("json", False)] if array else [("json lines", True), ("json", False)]
    error: Exception | None = None
    for kind, lines in attempts:
        try:
            frame = pd.read_json(path, lines=lines, compression=compression, dtype=False)
        except ValueError as e:
            error = error or e
            continue
        if any(isinstance(v, dict) for v in frame.iloc[:50].to_numpy().ravel()):
            frame = pd.json_normalize(frame.to_dict("records"))  # nested objects: a.b columns
        if len(frame) == 0:
            raise CliError(f"'{path}' holds no records; give one JSON object per row")
        return frame, kind
    raise CliError(
        f"'{path}' could not be read as JSON Lines or JSON ({_first_line(error or ValueError())}); "
        "give one JSON object per line"
    )


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
    """Column names as stripped strings, pandas 'category' columns as their values."""
    import pandas as pd

    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].astype(object)
    return frame.reset_index(drop=True)
