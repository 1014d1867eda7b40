"""Read click logs (ML-100k, Beauty-style .txt, generic CSV / Parquet) into one validated table.

Every loader returns a :class:`ClickLog`: a pandas frame with columns ``user``, ``item``
and, when the source has one, ``timestamp`` (seconds since 1970; int64 for ``u.data``,
float64 for CSV / Parquet so sub-second gaps survive). Rows stay in file order; ordering by
time is the job of :mod:`common.data.sequences`. Ids and duplicates follow the rules of
:mod:`common.data.ids`. A malformed file raises :class:`DataFormatError` whose message names
the file, the line and the field, so a user can fix it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.errors import DataFormatError, parser_problem, read_text_table
from common.data.ids import (
    MAX_INTEGER_DIGITS,
    drop_duplicate_interactions,
    integer_id_column,
    text_id_column,
)
from common.data.log_format import LogFormat
from common.data.timestamps import check_time_range, timestamp_seconds

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "FEDSEQREC_DATA"
BUILTIN_FILES = {
    "ml-100k": ("ml-100k", "u.data"),
    "beauty": ("amazon-beauty", "Beauty.txt"),
    "sports": ("amazon-sports", "Sports_and_Outdoors.txt"),
    "toys": ("amazon-toys", "Toys_and_Games.txt"),
}
BUILTIN_DATASETS = tuple(BUILTIN_FILES)
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


@dataclass(frozen=True)
class ClickLog:
    """Interactions in file order: columns user, item and optionally timestamp."""

    frame: pd.DataFrame
    source: str
    duplicates_dropped: int = 0

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
    """The embedded file of a built-in data set (``ml-100k``, ``beauty``, ``sports``, ``toys``)."""
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


def load_ml100k(path: Path | None = None) -> ClickLog:
    """Read MovieLens-100k ``u.data`` (user, item, rating, timestamp; tab separated)."""
    path = Path(path) if path is not None else builtin_path("ml-100k")
    _require_file(path)
    fields = ["user", "item", "rating", "timestamp"]
    try:
        raw = pd.read_csv(path, sep="\t", header=None, names=fields, dtype=str)
    except pd.errors.ParserError as error:
        raise DataFormatError(
            f"{path}: {parser_problem(error)} (expected 4 tab-separated fields)"
        ) from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason})") from None
    columns = {
        name: integer_id_column(raw[name], path, name, 1, allow_negative=name == "timestamp")
        for name in ("user", "item", "timestamp")
    }
    seconds = columns["timestamp"].astype(np.float64)
    check_time_range(seconds, raw["timestamp"], path, "timestamp", 1, "read as seconds since 1970")
    frame, dropped = drop_duplicate_interactions(pd.DataFrame(columns), str(path), 1)
    return ClickLog(frame.reset_index(drop=True), source=str(path), duplicates_dropped=dropped)


def load_beauty(path: Path | None = None) -> ClickLog:
    """Read the Beauty.txt format: one line per user, ``user item item ...`` in time order.

    Sports_and_Outdoors.txt and Toys_and_Games.txt share the format. Without timestamps a
    repeated item is a repeat interaction and is kept.
    """
    path = Path(path) if path is not None else builtin_path("beauty")
    _require_file(path)
    users: list[int] = []
    items: list[int] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                fields = raw.decode("utf-8").split()
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    f"{path}, line {number}: not UTF-8 text ({error.reason})"
                ) from None
            if not fields:
                continue
            if len(fields) < 2:
                raise DataFormatError(f"{path}, line {number}: a user id needs at least one item")
            plain = raw.isascii() and "".join(fields).isdigit()  # fast path: all digits
            if not plain or max(map(len, fields)) > MAX_INTEGER_DIGITS:
                for position, token in enumerate(fields):
                    _check_integer_token(token, path, number, position)
            users.extend([int(fields[0])] * (len(fields) - 1))
            items.extend(int(token) for token in fields[1:])
    if not users:
        raise DataFormatError(f"{path}: no interactions found")
    frame = pd.DataFrame({"user": np.asarray(users), "item": np.asarray(items)})
    return ClickLog(frame, source=str(path))


def _check_integer_token(token: str, path: Path, number: int, position: int) -> None:
    """One id of a Beauty-style line: a non-negative integer that fits an int64."""
    field = "user" if position == 0 else f"item {position}"
    where = f"{path}, line {number}: field '{field}'"
    shown = repr(token) if len(token) <= 80 else f"{token[:40]!r}... ({len(token):,} characters)"
    if token.isascii() and token.isdigit():
        if len(token) > MAX_INTEGER_DIGITS:
            raise DataFormatError(f"{where} is too large for a 64-bit integer, got {shown}")
        return
    if token.startswith("-") and token[1:].isascii() and token[1:].isdigit():
        raise DataFormatError(f"{where} must not be a negative number, got {shown}")
    raise DataFormatError(f"{where} must be an integer, got {shown}")


def load_click_log(
    path: Path, log_format: LogFormat | None = None, separator: str = ","
) -> ClickLog:
    """Read a CSV or Parquet click log; ids may be strings, the timestamp is optional.

    ``log_format`` names the columns (:mod:`common.data.log_format`). When the file lacks
    the default ``timestamp`` column the log has no timestamps and file order is time
    order; a timestamp column named explicitly must exist. Extra columns are ignored.
    """
    path = Path(path)
    log_format = log_format or LogFormat()
    _require_file(path)
    frame = _read_table(path, separator)
    first_line = 2  # line 1 of a CSV is the header
    if frame.empty:
        raise DataFormatError(f"{path}: no interactions found (only a header?)")
    wanted = [(log_format.user, "user"), (log_format.item, "item")]
    if log_format.timestamp and (
        log_format.timestamp != "timestamp" or "timestamp" in frame.columns
    ):
        wanted.append((log_format.timestamp, "timestamp"))
    _require_columns(frame, wanted, path, separator)
    columns = {
        role: text_id_column(frame[name], path, name, first_line) for name, role in wanted[:2]
    }
    table = pd.DataFrame(columns, index=frame.index)
    if len(wanted) == 3:
        name = wanted[2][0]
        table["timestamp"] = timestamp_seconds(
            frame[name], path, name, log_format.time_unit, first_line
        )
    table, dropped = drop_duplicate_interactions(table, str(path), first_line)
    return ClickLog(table.reset_index(drop=True), source=str(path), duplicates_dropped=dropped)


def _require_columns(
    frame: pd.DataFrame, wanted: list[tuple[str, str]], path: Path, separator: str
) -> None:
    """Every named column exists, else one error listing the columns found."""
    for name, role in wanted:
        if name not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            hint = ""
            if len(frame.columns) == 1 and any(c in found for c in ";\t|,"):
                hint = f"; wrong delimiter? this file is read with {separator!r}"
            raise DataFormatError(
                f"{path}: missing {role} column '{name}' (columns found: {found}){hint}"
            )


def _read_table(path: Path, separator: str) -> pd.DataFrame:
    """Read CSV or Parquet; blank CSV lines are dropped but keep their line numbers."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise DataFormatError(f"{path}: not a readable Parquet file ({error})") from None
    frame = read_text_table(
        path, separator, "no header line and no interactions", skip_blank_lines=False
    )
    return frame.loc[~frame.isna().all(axis=1)]


def dataset_log_format(dataset: str, columns: str = "", time_unit: str = "") -> LogFormat:
    """Parse a column spec and time unit for ``dataset``; checked before any file is read."""
    log_format = LogFormat.parse(columns, time_unit)
    suffix = Path(dataset).suffix.lower()
    if not log_format.is_default and (dataset in BUILTIN_FILES or suffix not in TABLE_SUFFIXES):
        raise ValueError(
            f"dataset {dataset!r}: column names and time units apply to .csv, .tsv and "
            ".parquet logs only (built-in data sets, u.data and .txt have a fixed layout)"
        )
    return log_format


def load_dataset(name_or_path: str | Path, log_format: LogFormat | None = None) -> ClickLog:
    """Load a built-in data set by name or any click log by path.

    ``log_format`` (column names, time unit) applies to CSV / TSV / Parquet logs only.
    """
    name = str(name_or_path)
    path = builtin_path(name) if name in BUILTIN_FILES else Path(name)
    suffix = path.suffix.lower()
    if log_format is not None and not log_format.is_default and suffix not in TABLE_SUFFIXES:
        raise DataFormatError(
            f"{name}: column names and time units apply to .csv, .tsv and .parquet logs, "
            f"not to {path.name} (its layout is fixed)"
        )
    if path.name == "u.data":
        return load_ml100k(path)
    if suffix == ".txt":
        return load_beauty(path)
    if suffix in TABLE_SUFFIXES:
        return load_click_log(path, log_format, "\t" if suffix == ".tsv" else ",")
    raise DataFormatError(
        f"{name}: unknown data set; use one of {', '.join(BUILTIN_DATASETS)} or a path to "
        "u.data, a Beauty-style .txt, .csv, .tsv or .parquet file"
    )
