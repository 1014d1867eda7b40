"""The one error type for unusable data files, and helpers that name the offending line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class DataFormatError(ValueError):
    """A data file cannot be used; the message names file, line and field."""


def first_bad_line(bad: pd.Series, first_line: int) -> int:
    """The file line of the first True in ``bad``: its index label + ``first_line``.

    Loaders keep the frame index of the rows as read (blank lines included), so the
    label of row ``k`` is ``k`` and the line is exact even when blank lines were dropped.
    """
    return int(bad.index[np.flatnonzero(bad.to_numpy(dtype=bool))[0]]) + first_line


def parser_problem(error: Exception) -> str:
    """pandas' CSV tokenizer message as one line: 'line 3: expected 2 fields, saw 3'."""
    text = " ".join(str(error).split())
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if found:
        expected, line, saw = found.groups()
        return f"line {line}: expected {expected} fields, saw {saw} (ragged line)"
    return text


def read_text_table(path: Path, separator: str, empty: str, **options: Any) -> pd.DataFrame:
    """``pd.read_csv`` of string columns; a failure is one DataFormatError naming ``path``.

    ``empty`` says what an empty file lacks (it differs between click logs and attributes).
    """
    try:
        return pd.read_csv(
            path, sep=separator, dtype=str, keep_default_na=False, na_values=[""], **options
        )
    except pd.errors.ParserError as error:
        raise DataFormatError(f"{path}: {parser_problem(error)}") from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: {empty}") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason})") from None
