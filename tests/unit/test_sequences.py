"""Sequence building and the leave-one-out split of the evaluation protocol."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from common.data.loaders import ClickLog
from common.data.sequences import build_sequences, leave_one_out_split


def make_log(rows: list[tuple[int, int, int]]) -> ClickLog:
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return ClickLog(frame, source="test")


def test_time_order_with_ties_broken_by_item_id() -> None:
    log = make_log([(7, 30, 5), (7, 20, 5), (7, 10, 9), (3, 10, 1)])
    dataset = build_sequences(log)
    assert list(dataset.user_ids) == [3, 7]
    assert list(dataset.item_ids) == [10, 20, 30]
    assert [list(s) for s in dataset.sequences] == [[1], [2, 3, 1]]
    assert dataset.timestamps is not None
    assert list(dataset.timestamps[1]) == [5, 5, 9]


def test_leave_one_out_targets_and_inputs() -> None:
    dataset = build_sequences(make_log([(1, i, i) for i in range(1, 6)]))
    split = leave_one_out_split(dataset)
    assert list(split.train[0]) == [1, 2, 3]
    assert (split.valid_target[0], split.test_target[0]) == (4, 5)
    assert list(split.inputs("test")[0]) == [1, 2, 3, 4]
    times = split.input_times("test")
    assert times is not None
    assert list(times[0]) == [1, 2, 3, 4]


def test_short_users_kept_for_training_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    rows = [(1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2), (2, 3, 3)]
    with caplog.at_level(logging.WARNING):
        split = leave_one_out_split(build_sequences(make_log(rows)))
    assert list(split.train[0]) == [1, 2]
    assert split.test_target[0] == 0
    assert list(split.evaluated_users()) == [1]
    assert "1 of 2 users have fewer than 3 interactions" in caplog.text


def test_ml100k_split_sizes() -> None:
    from common.data.loaders import load_ml100k

    split = leave_one_out_split(build_sequences(load_ml100k()))
    assert len(split.evaluated_users()) == 943
    assert sum(len(t) for t in split.train) == 99_999 - 2 * 943
    assert np.all(split.valid_target > 0)


def test_bad_stage_name() -> None:
    split = leave_one_out_split(build_sequences(make_log([(1, 1, 1), (1, 2, 2), (1, 3, 3)])))
    with pytest.raises(ValueError, match="stage must be"):
        split.inputs("train")
