"""User and item ids of a click log: checked, ordered as numbers, duplicates reported.

Rules (the same for every loader):

- An id is at most 64 characters, not empty, without control characters (tab, newline).
- A numeric id must not be negative (``-5`` is refused, not read as a name).
- Integer formats (``u.data``, Beauty-style ``.txt``) need ids that fit a 64-bit integer.
- Ids are ordered *naturally*: runs of digits compare as numbers, so ``9`` comes before
  ``10`` and ``sku-9`` before ``sku-10`` (ties at equal times are broken in this order).
- Duplicate interactions (same user, item and timestamp) keep their first row in file
  order; the others are dropped and their count is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.data.errors import DataFormatError, first_bad_line

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 64
MAX_INTEGER_DIGITS = 18  # every 18-digit number fits an int64
_DIGIT_RUN = re.compile(r"([0-9]+)")
_NEGATIVE_NUMBER = r"-\s*[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?"
_CONTROL = r"[\x00-\x1f\x7f]"


def _check_text(text: pd.Series, path: Path, field: str, first_line: int) -> None:
    """Refuse empty, over-long, control-character and negative numeric ids."""
    checks = (
        (text == "", "is empty"),
        (text.str.len() > MAX_ID_LENGTH, f"is over {MAX_ID_LENGTH} characters"),
        (text.str.contains(_CONTROL, regex=True), "contains a control character"),
        (text.str.fullmatch(_NEGATIVE_NUMBER), "must not be a negative number"),
    )
    for bad, problem in checks:
        if bad.any():
            line = first_bad_line(bad, first_line)
            raise DataFormatError(
                f"{path}, line {line}: field '{field}' {problem}, "
                f"got {_shown(text.loc[line - first_line])}"
            )


def _shown(value: str) -> str:
    """A value for an error message, shortened when huge."""
    return repr(value) if len(value) <= 80 else f"{value[:40]!r}... ({len(value):,} characters)"


def text_id_column(values: pd.Series, path: Path, field: str, first_line: int = 2) -> np.ndarray:
    """String ids (stripped) after the checks above; missing values are named."""
    missing = values.isna()
    text = values.astype(str).str.strip().where(~missing, "")
    _check_text(text, path, field, first_line)
    return text.to_numpy(dtype=object)


def integer_id_column(
    values: pd.Series, path: Path, field: str, first_line: int = 1, allow_negative: bool = False
) -> np.ndarray:
    """Non-negative integers (or signed, for times) that fit an int64; bad lines named."""
    text = values.astype(str).str.strip().where(values.notna(), "")
    if not allow_negative:
        _check_text(text, path, field, first_line)
    pattern = r"-?[0-9]+" if allow_negative else r"[0-9]+"
    bad = ~text.str.fullmatch(pattern)
    if bad.any():
        line = first_bad_line(bad, first_line)
        raw = text.loc[line - first_line]
        shown = "nothing" if raw == "" else _shown(raw)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' must be an integer, got {shown}"
        )
    too_big = text.str.lstrip("-").str.len() > MAX_INTEGER_DIGITS
    if too_big.any():
        line = first_bad_line(too_big, first_line)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' is too large for a 64-bit integer, "
            f"got {_shown(text.loc[line - first_line])}"
        )
    return text.astype(np.int64).to_numpy()


def natural_key(value: Any) -> tuple[tuple[Any, ...], str]:
    """Sort key comparing digit runs as numbers: '9' < '10', 'sku-9' < 'sku-10'."""
    text = str(value)
    parts = _DIGIT_RUN.split(text)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


def natural_ranks(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Rank of every id in natural order (integers: their numeric order)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        order = np.argsort(ids, kind="stable")
    else:
        order = np.asarray(sorted(range(len(ids)), key=lambda i: natural_key(ids[i])), dtype=int)
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.arange(len(ids))
    return ranks


def drop_duplicate_interactions(
    frame: pd.DataFrame, source: str, first_line: int = 1
) -> tuple[pd.DataFrame, int]:
    """Keep the first of rows with equal (user, item, timestamp); log how many were dropped."""
    if "timestamp" not in frame.columns:
        return frame, 0
    duplicated = frame.duplicated(subset=["user", "item", "timestamp"], keep="first")
    count = int(duplicated.sum())
    if count:
        logger.warning(
            "%s: %d duplicate interactions (same user, item and timestamp) dropped, "
            "the first of each kept; first duplicate on line %d",
            source,
            count,
            first_bad_line(duplicated, first_line),
        )
        frame = frame.loc[~duplicated]
    return frame, count
