"""The one error type for unusable data files, and helpers that name the offending line."""

from __future__ import annotations

import re

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
