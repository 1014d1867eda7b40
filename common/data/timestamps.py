"""Timestamps of a foreign click log as float seconds since 1970, at their real resolution.

Numeric timestamps are scaled by their unit (stated, or detected from the magnitude with a
warning); date strings are parsed as ISO-8601 (any resolution, time zones honoured, naive
times taken as UTC), falling back to pandas' mixed-format parser with a warning. Seconds
are kept as float64 so sub-second gaps order events; whole-second data stays exact.

Every time must fall between 1970-01-01 and 2200-01-01 (UTC), read in its unit: one
absurd value (``1e300``) would otherwise make the detected unit nanoseconds and squash
every other row into 1970.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.errors import DataFormatError, first_bad_line
from common.data.log_format import AUTO_UNIT, TIME_UNITS

logger = logging.getLogger(__name__)

# Largest magnitude read as seconds, milliseconds, microseconds by ``auto``: 1e11 s is the
# year 5138, while 1e11 ms is 1973; every step is a factor 1,000.
AUTO_THRESHOLDS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
EPOCH = pd.Timestamp(0, tz="UTC")
# Accepted times in seconds since 1970 (UTC): from 1970-01-01 up to, not including, 2200.
EARLIEST, LATEST = 0.0, (pd.Timestamp("2200-01-01", tz="UTC") - EPOCH).total_seconds()
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def timestamp_seconds(
    values: pd.Series, path: Path, field: str, unit: str = AUTO_UNIT, first_line: int = 2
) -> np.ndarray:
    """Seconds since 1970 per row (float64); one clear error names the first bad line."""
    text = values.astype(str).str.strip()
    missing = values.isna() | (text == "")
    if missing.any():
        raise DataFormatError(f"{path}, line {first_bad_line(missing, first_line)}: "
                              f"field '{field}' is empty")  # fmt: skip
    not_a_number = text.str.lower().isin(("nan", "+nan", "-nan"))
    if not_a_number.any():
        line = first_bad_line(not_a_number, first_line)
        raise DataFormatError(f"{path}, line {line}: field '{field}' must be a finite time, "
                              f"got {text.loc[line - first_line]!r}")  # fmt: skip
    if pd.api.types.is_numeric_dtype(values.dtype):
        numeric = values.astype(np.float64)
    else:
        numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return _numeric_seconds(numeric.to_numpy(np.float64), text, path, field, unit, first_line)
    if numeric.notna().any():
        line = first_bad_line(numeric.isna(), first_line)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' must be a number like the lines before "
            f"it, got {text.loc[line - first_line]!r}"
        )
    return _date_seconds(text, path, field, first_line)


def _numeric_seconds(
    numbers: np.ndarray, text: pd.Series, path: Path, field: str, unit: str, first_line: int
) -> np.ndarray:
    """Scale numeric timestamps to seconds, refusing non-finite values."""
    finite = np.isfinite(numbers)
    if not finite.all():
        line = first_bad_line(pd.Series(~finite, index=text.index), first_line)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' must be a finite time, "
            f"got {text.loc[line - first_line]!r}"
        )
    stated = unit != AUTO_UNIT
    unit = unit if stated else detect_unit(numbers)
    seconds = numbers * TIME_UNITS[unit]
    reading = f"read as {UNIT_NAMES[unit]} since 1970"
    if not stated:
        reading += " (detected from the largest value; state the time unit if that is wrong)"
    check_time_range(seconds, text, path, field, first_line, reading)
    if unit != "s" and not stated:
        logger.warning(
            "%s: field '%s' looks like %s since 1970 (largest value %.0f); "
            "state the unit (time unit s/ms/us/ns) if that is wrong",
            path, field, UNIT_NAMES[unit], float(np.abs(numbers).max()),
        )  # fmt: skip
    return seconds


def detect_unit(numbers: np.ndarray) -> str:
    """The unit that puts the largest timestamp before the year 5138."""
    largest = float(np.abs(numbers).max()) if len(numbers) else 0.0
    return next((name for limit, name in AUTO_THRESHOLDS if largest < limit), "ns")


def check_time_range(
    seconds: np.ndarray,
    text: pd.Series,
    path: Path,
    field: str,
    first_line: int,
    reading: str = "",
) -> None:
    """Every time from 1970 up to 2200 (UTC); else an error naming the first line outside.

    ``text`` holds the values as written (same index as the file's rows); ``reading`` says
    how numbers were read (their unit), for the message.
    """
    outside = ~((seconds >= EARLIEST) & (seconds < LATEST))
    if outside.any():
        line = first_bad_line(pd.Series(outside, index=text.index), first_line)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' must be a time between 1970 and 2200 "
            f"(UTC), got {text.loc[line - first_line]!r} {reading}".rstrip()
        )


def _date_seconds(text: pd.Series, path: Path, field: str, first_line: int) -> np.ndarray:
    """Date strings to float seconds since 1970 (UTC), at whatever resolution they carry."""
    dates = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    if dates.isna().any():
        mixed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
        if mixed.notna().all():
            logger.warning(
                "%s: field '%s' is not ISO-8601; read with pandas' mixed date parser "
                "(month before day when ambiguous): prefer ISO-8601 dates",
                path,
                field,
            )
            dates = mixed
    if dates.isna().any():
        line = first_bad_line(dates.isna(), first_line)
        raise DataFormatError(
            f"{path}, line {line}: field '{field}' must be a number or a date "
            f"(ISO-8601), got {text.loc[line - first_line]!r}"
        )
    seconds = ((dates - EPOCH) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    check_time_range(seconds, text, path, field, first_line)
    return seconds
