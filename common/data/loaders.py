"""Read click logs (ML-100k, Beauty.txt, generic CSV / Parquet) into one validated table.

Every loader returns a :class:`ClickLog`: a pandas frame with columns ``user``, ``item``
and, when the source has one, ``timestamp``. Rows stay in file order; ordering by time is
the job of :mod:`common.data.sequences`. A malformed file raises :class:`DataFormatError` whose
message names the file, the line and the field, so a user can fix it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATA_DIR_ENV = "FEDSEQREC_DATA"
BUILTIN_FILES = {"ml-100k": ("ml-100k", "u.data"), "beauty": ("amazon-beauty", "Beauty.txt")}
BUILTIN_DATASETS = tuple(BUILTIN_FILES)


class DataFormatError(ValueError):
    """A click log cannot be used; the message names file, line and field."""


@dataclass(frozen=True)
class ClickLog:
    """Interactions in file order: columns user, item and optionally timestamp."""

    frame: pd.DataFrame
    source: str

    @property
    def has_timestamps(self) -> bool:
        """Whether the log carries a timestamp per interaction."""
        return "timestamp" in self.frame.columns


def data_dir() -> Path:
    """Folder holding the embedded data sets (override with $FEDSEQREC_DATA)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "data"


def builtin_path(name: str) -> Path:
    """The embedded file of a built-in data set (``ml-100k``, ``beauty``)."""
    if name not in BUILTIN_FILES:
        raise DataFormatError(f"{name}: not a built-in data set ({', '.join(BUILTIN_DATASETS)})")
    folder, filename = BUILTIN_FILES[name]
    return data_dir() / folder / filename


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if not path.is_file():
        raise DataFormatError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: file is empty")


def _integer_column(values: pd.Series, path: Path, field: str, first_line: int) -> np.ndarray:
    """Parse a column of integers, naming the first bad line on failure."""
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna() | (parsed != np.floor(parsed))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raw = values.iloc[row]
        shown = "nothing" if pd.isna(raw) else repr(raw)
        raise DataFormatError(
            f"{path}, line {row + first_line}: field '{field}' must be an integer, got {shown}"
        )
    return parsed.to_numpy(dtype=np.int64)


def load_ml100k(path: Path | None = None) -> ClickLog:
    """Read MovieLens-100k ``u.data`` (user, item, rating, timestamp; tab separated)."""
    path = Path(path) if path is not None else builtin_path("ml-100k")
    _require_file(path)
    fields = ["user", "item", "rating", "timestamp"]
    try:
        raw = pd.read_csv(path, sep="\t", header=None, names=fields, dtype=str)
    except pd.errors.ParserError as error:
        raise DataFormatError(f"{path}: {error} (expected 4 tab-separated fields)") from None
    columns = {
        name: _integer_column(raw[name], path, name, first_line=1)
        for name in ("user", "item", "timestamp")
    }
    return ClickLog(pd.DataFrame(columns), source=str(path))


def load_beauty(path: Path | None = None) -> ClickLog:
    """Read the Beauty.txt format: one line per user, ``user item item ...`` in time order."""
    path = Path(path) if path is not None else builtin_path("beauty")
    _require_file(path)
    users: list[int] = []
    items: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataFormatError(f"{path}, line {number}: a user id needs at least one item")
            for position, token in enumerate(fields):
                if not token.isdigit():
                    field = "user" if position == 0 else f"item {position}"
                    raise DataFormatError(
                        f"{path}, line {number}: field '{field}' must be an integer, got {token!r}"
                    )
            user = int(fields[0])
            users.extend([user] * (len(fields) - 1))
            items.extend(int(token) for token in fields[1:])
    if not users:
        raise DataFormatError(f"{path}: no interactions found")
    frame = pd.DataFrame({"user": np.asarray(users), "item": np.asarray(items)})
    return ClickLog(frame, source=str(path))


def load_click_log(
    path: Path,
    user_column: str = "user",
    item_column: str = "item",
    time_column: str | None = "timestamp",
    separator: str = ",",
) -> ClickLog:
    """Read a CSV or Parquet click log; ids may be strings, the timestamp is optional.

    ``time_column`` names an optional column: when the file lacks it, the log has no
    timestamps and file order is taken as time order. Timestamps must be numeric or
    ISO-8601 dates.
    """
    path = Path(path)
    _require_file(path)
    frame = _read_table(path, separator)
    first_line = 2  # line 1 of a CSV is the header
    if frame.empty:
        raise DataFormatError(f"{path}: no interactions found (only a header?)")
    for name, role in ((user_column, "user"), (item_column, "item")):
        if name not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            raise DataFormatError(
                f"{path}: missing {role} column '{name}' (columns found: {found})"
            )
    columns: dict[str, object] = {}
    for name, role in ((user_column, "user"), (item_column, "item")):
        values = frame[name]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise DataFormatError(f"{path}, line {row + first_line}: field '{name}' is empty")
        columns[role] = values.astype(str).str.strip().to_numpy()
    if time_column is not None and time_column in frame.columns:
        columns["timestamp"] = _timestamp_column(frame[time_column], path, time_column)
    return ClickLog(pd.DataFrame(columns), source=str(path))


def _read_table(path: Path, separator: str) -> pd.DataFrame:
    """Read CSV or Parquet as strings, turning parser failures into DataFormatError."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise DataFormatError(f"{path}: not a readable Parquet file ({error})") from None
    try:
        return pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as error:
        raise DataFormatError(f"{path}: {error}") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason})") from None


def _timestamp_column(values: pd.Series, path: Path, field: str) -> np.ndarray:
    """Numeric timestamps as int64 seconds; ISO dates converted; bad lines named."""
    first_line = 2
    numeric = pd.to_numeric(values, errors="coerce")
    if not numeric.isna().any():
        return numeric.to_numpy(dtype=np.float64).astype(np.int64)
    if numeric.notna().any():
        row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        raise DataFormatError(
            f"{path}, line {row + first_line}: field '{field}' must be a number, "
            f"got {values.iloc[row]!r}"
        )
    dates = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataFormatError(
            f"{path}, line {row + first_line}: field '{field}' must be a number or an "
            f"ISO-8601 date, got {values.iloc[row]!r}"
        )
    return (dates.astype("int64") // 10**9).to_numpy(dtype=np.int64)


def load_dataset(name_or_path: str | Path, **click_log_options: str | None) -> ClickLog:
    """Load a built-in data set by name (ml-100k, beauty) or any click log by path."""
    name = str(name_or_path)
    if name == "ml-100k":
        return load_ml100k()
    if name == "beauty":
        return load_beauty()
    path = Path(name)
    if path.name == "u.data":
        return load_ml100k(path)
    if path.suffix.lower() == ".txt":
        return load_beauty(path)
    if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
        if path.suffix.lower() == ".tsv":
            click_log_options.setdefault("separator", "\t")
        return load_click_log(path, **click_log_options)  # type: ignore[arg-type]
    raise DataFormatError(
        f"{name}: unknown data set; use one of {', '.join(BUILTIN_DATASETS)} or a path to "
        "u.data, a Beauty-style .txt, .csv, .tsv or .parquet file"
    )
