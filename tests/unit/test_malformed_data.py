"""Malformed data files: each gives one clear error naming file, line and field; nothing written.

Every case writes one bad file, loads it the way a user would, and checks the single
error message (file name, line, field where there is one) and that the folder is
unchanged afterwards. A few go through ``fedseqrec-train`` in a subprocess: exit code 2,
one line on stderr, no traceback, no run folder.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from common.data.attributes import load_item_attributes
from common.data.errors import DataFormatError
from common.data.loaders import load_dataset, load_ml100k
from common.data.log_format import LogFormat
from tests.helpers import PROJECT_ROOT

HUGE = "7" * 2_000_000
LONG = "x" * 65
ITEMS = ["1", "2", "3"]


@dataclass(frozen=True)
class Case:
    """One malformed file, how it is loaded and the message expected."""

    name: str
    filename: str
    content: str | bytes | Callable[[Path], None]
    pattern: str
    load: str = "data"  # data | attributes | columns=<spec> | unit=<unit>


def _parquet(frame: dict[str, list[object]]) -> Callable[[Path], None]:
    return lambda path: pd.DataFrame(frame).to_parquet(path)


CSV_CASES = [
    Case("empty", "log.csv", "", r"log\.csv: file is empty"),
    Case("header only", "log.csv", "user,item,timestamp\n", r"log\.csv: no interactions"),
    Case("blank lines only", "log.csv", "user,item\n\n\n", r"log\.csv: no interactions"),
    Case("missing user", "log.csv", "item,timestamp\n1,2\n", r"missing user column 'user'"),
    Case("missing item", "log.csv", "user,timestamp\n1,2\n", r"missing item column 'item'"),
    Case("semicolons", "log.csv", "user;item\n1;2\n", r"log\.csv: missing.*wrong delimiter"),
    Case("tabs in csv", "log.csv", "user\titem\n1\t2\n", r"missing.*wrong delimiter"),
    Case("commas in tsv", "log.tsv", "user,item\n1,2\n", r"log\.tsv: missing.*wrong delim"),
    Case("word time", "log.csv", "user,item,timestamp\n1,2,5\n1,3,later\n",
         r"log\.csv, line 3: field 'timestamp' must be a number.*'later'"),
    Case("inf time", "log.csv", "user,item,timestamp\n1,2,5\n1,3,inf\n",
         r"log\.csv, line 3: field 'timestamp' must be a finite time, got 'inf'"),
    Case("-inf time", "log.csv", "user,item,timestamp\n1,2,-inf\n",
         r"line 2: field 'timestamp' must be a finite time"),
    Case("nan time", "log.csv", "user,item,timestamp\n1,2,5\n1,3,nan\n",
         r"line 3: field 'timestamp' must be a finite time, got 'nan'"),
    Case("NaN time alone", "log.csv", "user,item,timestamp\n1,3,NaN\n",
         r"line 2: field 'timestamp' must be a finite time"),
    Case("1e400 time", "log.csv", "user,item,timestamp\n1,3,1e400\n",
         r"line 2: field 'timestamp' must be a finite time"),
    Case("1e300 time", "log.csv", "user,item,timestamp\n1,2,1700000000\n1,3,1e300\n2,4,17e8\n",
         r"log\.csv, line 3: field 'timestamp' must be a time between 1970 and 2200 \(UTC\), "
         r"got '1e300' read as nanoseconds since 1970 \(detected from the largest value"),
    Case("time before 1970", "log.csv", "user,item,timestamp\n1,2,1700000000\n1,3,-5\n",
         r"line 3: field 'timestamp' must be a time between 1970 and 2200 \(UTC\), got '-5'"),
    Case("seconds after 2200", "log.csv", "user,item,timestamp\n1,2,5\n1,3,7258118400\n",
         r"line 3: field 'timestamp' must be a time between 1970 .*read as seconds since 1970$",
         "unit=s"),
    Case("ms stated, year 5138", "log.csv", "user,item,timestamp\n1,2,1e14\n",
         r"line 2: .* got '1e14' read as milliseconds since 1970$", "unit=ms"),
    Case("date before 1970", "log.csv", "user,item,timestamp\n1,2,2024-01-01\n1,3,1969-12-31\n",
         r"line 3: field 'timestamp' must be a time between 1970 and 2200 \(UTC\), "
         r"got '1969-12-31'$"),
    Case("date in 2200", "log.csv", "user,item,timestamp\n1,2,2200-01-01T00:00:00Z\n",
         r"line 2: field 'timestamp' must be a time between 1970 and 2200"),
    Case("empty time", "log.csv", "user,item,timestamp\n1,2,5\n1,3,\n",
         r"line 3: field 'timestamp' is empty"),
    Case("bad date", "log.csv", "user,item,timestamp\n1,2,2024-01-01\n1,3,yesterday\n",
         r"line 3: field 'timestamp' must be a number or a date.*'yesterday'"),
    Case("impossible date", "log.csv", "user,item,timestamp\n1,2,2024-13-45\n",
         r"line 2: field 'timestamp' must be a number or a date"),
    Case("date among numbers", "log.csv", "user,item,timestamp\n1,2,5\n1,3,2024-01-01\n",
         r"line 3: field 'timestamp' must be a number like the lines before"),
    Case("negative user", "log.csv", "user,item\n1,2\n-3,2\n",
         r"log\.csv, line 3: field 'user' must not be a negative number, got '-3'"),
    Case("negative item", "log.csv", "user,item\n1,-1.5\n",
         r"line 2: field 'item' must not be a negative number"),
    Case("negative exponent item", "log.csv", "user,item\n1,-2e3\n",
         r"line 2: field 'item' must not be a negative number"),
    Case("65-char user", "log.csv", f"user,item\n{LONG},2\n",
         r"line 2: field 'user' is over 64 characters"),
    Case("65-char item", "log.csv", f"user,item\n1,2\n1,{LONG}\n",
         r"line 3: field 'item' is over 64 characters"),
    Case("2M-digit item", "log.csv", f"user,item\n1,{HUGE}\n",
         r"line 2: field 'item' is over 64 characters, got '7777.*2,000,000 characters"),
    Case("empty user", "log.csv", "user,item\n1,2\n,3\n", r"line 3: field 'user' is empty"),
    Case("empty item", "log.csv", "user,item\n1,\n", r"line 2: field 'item' is empty"),
    Case("blank item", "log.csv", "user,item\n1,   \n", r"line 2: field 'item' is empty"),
    Case("bad utf-8", "log.csv", b"user,item\n1,\xff\xfe\n", r"log\.csv: not UTF-8 text"),
    Case("latin-1", "log.csv", "user,item\n1,caf\xe9\n".encode("latin-1"), r"not UTF-8 text"),
    Case("ragged long", "log.csv", "user,item,timestamp\n1,2,3\n1,2,3,4\n",
         r"log\.csv: line 3: expected 3 fields, saw 4 \(ragged line\)"),
    Case("ragged short", "log.csv", "user,item,timestamp\n1,2,3\n1,2\n",
         r"line 3: field 'timestamp' is empty"),
    Case("tab inside id", "log.csv", 'user,item\n1,"a\tb"\n',
         r"line 2: field 'item' contains a control character"),
    Case("newline inside id", "log.csv", 'user,item\n1,"a\nb"\n',
         r"line 2: field 'item' contains a control character"),
    Case("line after blank", "log.csv", "user,item\n1,2\n\n\n-4,2\n",
         r"line 5: field 'user' must not be a negative"),
    Case("named time missing", "log.csv", "user,item,ts\n1,2,3\n",
         r"missing timestamp column 'event_time' \(columns found: user, item, ts\)",
         "columns=timestamp=event_time"),
    Case("named user missing", "log.csv", "user,item\n1,2\n",
         r"missing user column 'customer_id'", "columns=user=customer_id"),
    Case("ms stated, text", "log.csv", "user,item,timestamp\n1,2,soon\n",
         r"line 2: field 'timestamp' must be a number or a date", "unit=ms"),
    Case("unknown suffix", "log.xlsx", "user,item\n1,2\n", r"log\.xlsx: unknown data set"),
    Case("parquet missing column", "log.parquet", _parquet({"user": [1], "sku": [2]}),
         r"log\.parquet: missing item column 'item' \(columns found: user, sku\)"),
    Case("parquet corrupt", "log.parquet", b"PAR1 not really",
         r"log\.parquet: not a readable Parquet file"),
    Case("parquet inf", "log.parquet",
         _parquet({"user": [1, 1], "item": [2, 3], "timestamp": [1.0, float("inf")]}),
         r"field 'timestamp' must be a finite time"),
    Case("parquet nan", "log.parquet",
         _parquet({"user": [1], "item": [2], "timestamp": [float("nan")]}),
         r"field 'timestamp' is empty"),
    Case("parquet 1e300 time", "log.parquet",
         _parquet({"user": [1, 1], "item": [2, 3], "timestamp": [1.7e9, 1e300]}),
         r"log\.parquet, line 3: field 'timestamp' must be a time between 1970 and 2200"),
    Case("parquet negative id", "log.parquet", _parquet({"user": [-1], "item": [2]}),
         r"field 'user' must not be a negative number"),
    Case("parquet long id", "log.parquet", _parquet({"user": [LONG], "item": ["2"]}),
         r"field 'user' is over 64 characters"),
    Case("parquet null item", "log.parquet", _parquet({"user": ["1"], "item": [None]}),
         r"field 'item' is empty"),
]  # fmt: skip

FIXED_FORMAT_CASES = [
    Case("u.data empty", "u.data", "", r"u\.data: file is empty"),
    Case("u.data word item", "u.data", "1\t2\t5\t9\n1\tabc\t5\t9\n",
         r"u\.data, line 2: field 'item' must be an integer, got 'abc'"),
    Case("u.data negative user", "u.data", "-1\t2\t5\t9\n",
         r"u\.data, line 1: field 'user' must not be a negative number"),
    Case("u.data missing time", "u.data", "1\t2\t5\t9\n1\t3\t5\n",
         r"line 2: field 'timestamp' must be an integer, got nothing"),
    Case("u.data too many", "u.data", "1\t2\t5\t9\n1\t3\t5\t9\t9\n",
         r"u\.data: line 2: expected 4 fields, saw 5"),
    Case("u.data float time", "u.data", "1\t2\t5\t9.5\n",
         r"line 1: field 'timestamp' must be an integer, got '9.5'"),
    Case("u.data inf time", "u.data", "1\t2\t5\tinf\n",
         r"line 1: field 'timestamp' must be an integer, got 'inf'"),
    Case("u.data time after 2200", "u.data", "1\t2\t5\t9\n1\t3\t5\t99999999999\n",
         r"u\.data, line 2: field 'timestamp' must be a time between 1970 and 2200 \(UTC\), "
         r"got '99999999999' read as seconds since 1970"),
    Case("u.data negative time", "u.data", "1\t2\t5\t-9\n",
         r"u\.data, line 1: field 'timestamp' must be a time between 1970 and 2200"),
    Case("u.data 2M digits", "u.data", f"1\t{HUGE}\t5\t9\n",
         r"line 1: field 'item' is over 64 characters"),
    Case("u.data 20 digits", "u.data", "1\t12345678901234567890\t5\t9\n",
         r"line 1: field 'item' is too large for a 64-bit integer"),
    Case("u.data bad utf-8", "u.data", b"1\t2\t5\t9\n\xff\t2\t5\t9\n", r"u\.data: not UTF-8"),
    Case("u.data comma", "u.data", "1,2,5,9\n", r"line 1: field 'user' must be an integer"),
    Case("txt empty", "Toys.txt", "", r"Toys\.txt: file is empty"),
    Case("txt blank", "Toys.txt", "\n\n", r"Toys\.txt: no interactions found"),
    Case("txt lonely user", "Toys.txt", "1 2 3\n4\n",
         r"Toys\.txt, line 2: a user id needs at least one item"),
    Case("txt negative item", "Toys.txt", "1 2 -4\n",
         r"line 1: field 'item 2' must not be a negative number, got '-4'"),
    Case("txt word item", "Toys.txt", "1 2 x5\n", r"line 1: field 'item 2' must be an integer"),
    Case("txt float user", "Toys.txt", "1.5 2\n", r"line 1: field 'user' must be an integer"),
    Case("txt superscript", "Toys.txt", "1 \u00b2\n", r"field 'item 1' must be an integer"),
    Case("txt 2M digits", "Toys.txt", f"1 {HUGE}\n",
         r"line 1: field 'item 1' is too large for a 64-bit integer, got '7777.*characters"),
    Case("txt 19 digits", "Toys.txt", "1 2\n2 1234567890123456789\n",
         r"line 2: field 'item 1' is too large"),
    Case("txt bad utf-8", "Toys.txt", b"1 2 3\n2 \xff\n", r"Toys\.txt, line 2: not UTF-8"),
    Case("txt comma", "Toys.txt", "1,2,3\n", r"line 1: a user id needs at least one item"),
]  # fmt: skip

ATTRIBUTE_CASES = [
    Case("json broken", "attrs.json", '{"1": [1, 2],\n "2": [3',
         r"attrs\.json, line 2: invalid JSON", "attributes"),
    Case("json list", "attrs.json", "[1, 2]", r"expected a non-empty JSON object.*got list",
         "attributes"),
    Case("json empty", "attrs.json", "{}", r"expected a non-empty JSON object", "attributes"),
    Case("json not list", "attrs.json", '{"1": 5}',
         r"attrs\.json: item '1': attributes must be a list, got int", "attributes"),
    Case("json bool", "attrs.json", '{"1": [true]}',
         r"item '1', attribute 1 must be an integer or a string, got True", "attributes"),
    Case("json float", "attrs.json", '{"1": [2, 1.5]}',
         r"item '1', attribute 2 must be an integer or a string, got 1.5", "attributes"),
    Case("json nested", "attrs.json", '{"1": [[2]]}', r"attribute 1 must be an integer or a str",
         "attributes"),
    Case("json unknown item", "attrs.json", '{"1": [1], "99": [2]}',
         r"attrs\.json, item '99': item '99' is not in data set", "attributes"),
    Case("json long attribute", "attrs.json", f'{{"1": ["{LONG}"]}}',
         r"item '1', attribute 1: an id must be 1 to 64 printable characters", "attributes"),
    Case("json empty key", "attrs.json", '{"": [1]}', r"item '': an id must be 1 to 64",
         "attributes"),
    Case("json negative key", "attrs.json", '{"-3": [1]}',
         r"item '-3': must not be a negative number", "attributes"),
    Case("json bad utf-8", "attrs.json", b'{"1": ["\xff"]}', r"attrs\.json: not UTF-8",
         "attributes"),
    Case("gzip corrupt", "attrs.json.gz", b"\x1f\x8b\x08junk", r"attrs\.json\.gz: unreadable",
         "attributes"),
    Case("gzip of bad json", "attrs.json.gz", gzip.compress(b'{"1": '),
         r"attrs\.json\.gz, line 1: invalid JSON", "attributes"),
    Case("csv no attribute column", "attrs.csv", "item,brand\n1,a\n",
         r"attrs\.csv: missing column\(s\) attribute", "attributes"),
    Case("csv header only", "attrs.csv", "item,attribute\n", r"attrs\.csv: no rows",
         "attributes"),
    Case("csv empty", "attrs.csv", "", r"attrs\.csv: file is empty", "attributes"),
    Case("csv unknown item", "attrs.csv", "item,attribute\n1,a\n7,b\n",
         r"attrs\.csv, line 3: item '7' is not in data set", "attributes"),
    Case("csv empty attribute", "attrs.csv", "item,attribute\n1,a\n2,\n",
         r"attrs\.csv, line 3: field 'attribute' is empty", "attributes"),
    Case("csv 2M-digit item", "attrs.csv", f"item,attribute\n{HUGE},a\n",
         r"line 2: field 'item' is over 64 characters", "attributes"),
    Case("csv ragged", "attrs.csv", "item,attribute\n1,a\n2,b,c\n",
         r"attrs\.csv: line 3: expected 2 fields, saw 3", "attributes"),
    Case("xml", "attrs.xml", "<a/>", r"attrs\.xml: item attributes must be \.json", "attributes"),
]  # fmt: skip

SPEC_CASES = [
    Case("spec role", "log.csv", "user,item\n1,2\n", r"unknown role 'usr'", "columns=usr=a"),
    Case("spec no equals", "log.csv", "user,item\n1,2\n", r"'customer_id' is not role=column",
         "columns=customer_id"),
    Case("spec twice", "log.csv", "user,item\n1,2\n", r"role 'user' given twice",
         "columns=user=a,user=b"),
    Case("spec one column two roles", "log.csv", "user,item\n1,2\n",
         r"one column for two roles", "columns=user=a,item=a"),
    Case("spec empty item", "log.csv", "user,item\n1,2\n", r"role 'item' needs a column name",
         "columns=item="),
    Case("unit days", "log.csv", "user,item\n1,2\n", r"time unit must be one of auto, s, ms",
         "unit=days"),
]  # fmt: skip

CASES = CSV_CASES + FIXED_FORMAT_CASES + ATTRIBUTE_CASES + SPEC_CASES


def _write(folder: Path, case: Case) -> Path:
    path = folder / case.filename
    if callable(case.content):
        case.content(path)
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content)
    return path


def _load(path: Path, how: str) -> object:
    """Load a bad file the way a user would."""
    if how == "attributes":
        return load_item_attributes(str(path), ITEMS, "shop")
    kind, _, value = how.partition("=")
    columns, unit = (value, "") if kind == "columns" else ("", value)
    log_format = LogFormat.parse(columns, unit)
    if path.name == "u.data":
        return load_ml100k(path)
    return load_dataset(path, log_format)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_input_gives_one_clear_error(tmp_path: Path, case: Case) -> None:
    path = _write(tmp_path, case)
    saved = tmp_path / "saved.json"
    saved.write_text('{"keep": true}')
    before = _snapshot(tmp_path)

    with pytest.raises(ValueError) as caught:
        _load(path, case.load)

    message = str(caught.value)
    assert caught.type in (DataFormatError, ValueError)
    assert "\n" not in message and len(message) < 600
    assert re.search(case.pattern, message), message
    if isinstance(caught.value, DataFormatError):
        assert case.filename in message
    assert _snapshot(tmp_path) == before


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"absent\.csv: file not found"):
        load_dataset(tmp_path / "absent.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataFormatError, match=r"dir\.csv: not a regular file"):
        load_dataset(tmp_path / "dir.csv")
    with pytest.raises(DataFormatError, match=r"attrs\.json: item attribute file not found"):
        load_item_attributes(tmp_path / "attrs.json", ITEMS)
    with pytest.raises(DataFormatError, match=r"'shop\.csv' has no built-in attribute file"):
        load_item_attributes("builtin", ITEMS, "shop.csv")
    with pytest.raises(DataFormatError, match=r"u\.item, line 4: item '4' is not in data set"):
        load_item_attributes("builtin", ITEMS, "ml-100k")  # u.item describes other items


CLI_CASES = [
    ("log.csv", "user,item,timestamp\n1,2,5\n1,3,inf\n", [],
     r"log\.csv, line 3: field 'timestamp' must be a finite time"),
    ("log.csv", f"user,item\n1,{HUGE}\n", [], r"line 2: field 'item' is over 64 characters"),
    ("log.csv", "user,item,timestamp\n1,2,1700000000\n1,3,1e300\n", [],
     r"log\.csv, line 3: field 'timestamp' must be a time between 1970 and 2200"),
    ("log.csv", "user,item\n1,2\n", ["--columns", "usr=a"], r"unknown role 'usr'"),
    ("log.csv", "user,item\n1,2\n1,3\n1,4\n", ["--item-attributes", "attrs.json"],
     r"attrs\.json: item attribute file not found"),
    ("Toys.txt", "1 2 3 4\n", ["--columns", "user=a"], r"apply to \.csv, \.tsv and \.parquet"),
]  # fmt: skip


@pytest.mark.parametrize(("filename", "content", "flags", "pattern"), CLI_CASES)
def test_train_cli_refuses_bad_data_in_one_line(
    tmp_path: Path, filename: str, content: str, flags: list[str], pattern: str
) -> None:
    (tmp_path / filename).write_text(content)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "earlier.txt").write_text("kept")
    flags = [str(tmp_path / f) if f.endswith(".json") else f for f in flags]

    done = subprocess.run(
        [sys.executable, "-m", "common.training.cli", "--dataset", str(tmp_path / filename),
         "--out", str(runs), "--epochs", "1", *flags],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("fedseqrec-train: error: ")
    assert re.search(pattern, error_lines[0]), error_lines[0]
    assert [p.name for p in runs.iterdir()] == ["earlier.txt"]
    assert (runs / "earlier.txt").read_text() == "kept"
