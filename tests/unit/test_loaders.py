"""Loaders: embedded data counts and clear errors for malformed files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from common.data.loaders import (
    DataFormatError,
    load_beauty,
    load_click_log,
    load_dataset,
    load_ml100k,
)
from common.data.log_format import LogFormat
from common.data.sequences import build_sequences


def test_embedded_ml100k_counts() -> None:
    dataset = build_sequences(load_ml100k())
    assert (dataset.n_users, dataset.n_items, dataset.n_interactions) == (943, 1682, 99_999)


def test_embedded_beauty_counts() -> None:
    dataset = build_sequences(load_beauty())
    assert (dataset.n_users, dataset.n_items, dataset.n_interactions) == (22_363, 12_101, 198_502)


def test_ml100k_bad_timestamp_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n2\t11\t3\tsoon\n")
    with pytest.raises(DataFormatError, match=r"u.data, line 2: field 'timestamp'.*'soon'"):
        load_ml100k(path)


def test_ml100k_missing_field_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n2\t11\t3\n")
    with pytest.raises(DataFormatError, match=r"line 2: field 'timestamp'.*nothing"):
        load_ml100k(path)


def test_ml100k_too_many_fields_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n2\t11\t3\t9\t7\n")
    with pytest.raises(DataFormatError, match=r"u.data.*line 2"):
        load_ml100k(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "Beauty.txt"
    empty.touch()
    with pytest.raises(DataFormatError, match="file is empty"):
        load_beauty(empty)
    with pytest.raises(DataFormatError, match="file not found"):
        load_beauty(tmp_path / "absent.txt")


def test_beauty_bad_item_token(tmp_path: Path) -> None:
    path = tmp_path / "Beauty.txt"
    path.write_text("1 1 2 3\n2 4 x5\n")
    with pytest.raises(DataFormatError, match=r"line 2: field 'item 2'.*'x5'"):
        load_beauty(path)


def test_csv_with_string_ids_and_iso_dates(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,when\nalice,b,2024-01-02\nalice,a,2024-01-01\nbob,a,2024-01-03\n")
    log = load_click_log(path, LogFormat.parse("user=uid,item=sku,timestamp=when"))
    dataset = build_sequences(log)
    assert list(dataset.user_ids) == ["alice", "bob"]
    assert list(dataset.item_ids) == ["a", "b"]
    assert [list(s) for s in dataset.sequences] == [[1, 2], [1]]


def test_csv_missing_column_lists_found_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,product\n1,2\n")
    with pytest.raises(
        DataFormatError, match=r"missing item column 'item' \(columns found: user, product\)"
    ):
        load_click_log(path)


def test_csv_non_numeric_timestamp_names_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,100\n1,3,later\n")
    with pytest.raises(DataFormatError, match=r"line 3: field 'timestamp' must be a number"):
        load_click_log(path)


def test_csv_empty_user_names_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,2\n,3\n")
    with pytest.raises(DataFormatError, match=r"line 3: field 'user' is empty"):
        load_click_log(path)


def test_csv_without_timestamp_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,30\n1,10\n1,20\n")
    dataset = build_sequences(load_click_log(path))
    assert dataset.timestamps is None
    assert list(dataset.item_ids[dataset.sequences[0] - 1]) == ["30", "10", "20"]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1, 1, 2], "item": [5, 6, 5], "timestamp": [2, 1, 3]}).to_parquet(path)
    dataset = build_sequences(load_dataset(path))
    assert [list(s) for s in dataset.sequences] == [[2, 1], [1]]


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataFormatError, match="unknown data set"):
        load_dataset("movielens-1b")
