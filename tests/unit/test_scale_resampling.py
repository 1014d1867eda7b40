"""The scale benchmark's population: users drawn with replacement, written as a loadable log."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.scale import resample_users, write_resampled_log
from common.data.attributes import load_item_attributes
from common.data.loaders import load_dataset
from common.data.partitioning import load_split

# user 7: items 3, 1, 2; user 5: item 9 then 4 (interleaved in file order)
LOG = pd.DataFrame({"user": [7, 5, 7, 7, 5], "item": [3, 9, 1, 2, 4]})


def histories(frame: pd.DataFrame) -> dict[int, list[int]]:
    """Each user's items in file order."""
    return {int(u): group.tolist() for u, group in frame.groupby("user", sort=False)["item"]}


def test_every_drawn_user_keeps_one_source_history_under_a_new_id() -> None:
    resampled = resample_users(LOG, 50, np.random.default_rng(0))

    drawn = histories(resampled)
    assert sorted(drawn) == list(range(1, 51))
    assert all(items in ([3, 1, 2], [9, 4]) for items in drawn.values())
    assert {tuple(items) for items in drawn.values()} == {(3, 1, 2), (9, 4)}  # both drawn


def test_timestamps_travel_with_their_items_and_the_seed_fixes_the_draw() -> None:
    timed = LOG.assign(timestamp=[30.0, 10.0, 40.0, 50.0, 20.0])

    first = resample_users(timed, 8, np.random.default_rng(3))
    again = resample_users(timed, 8, np.random.default_rng(3))

    pd.testing.assert_frame_equal(first, again)
    pairs = set(zip(first["item"], first["timestamp"], strict=True))
    assert pairs <= set(zip(timed["item"], timed["timestamp"], strict=True))


def test_a_population_needs_a_user() -> None:
    with pytest.raises(ValueError, match="n_users must be positive, got 0"):
        resample_users(LOG, 0, np.random.default_rng(0))


def test_the_written_log_and_attributes_load_as_a_data_set(tmp_path: Path) -> None:
    attributes = tmp_path / "all_item2attributes.json.gz"
    with gzip.open(attributes, "wt", encoding="utf-8") as handle:
        json.dump({"1": [10], "2": [11], "3": [10], "4": [12], "9": [12], "8": [13]}, handle)
    resampled = resample_users(LOG, 6, np.random.default_rng(1))

    path = write_resampled_log(resampled, attributes, tmp_path / "population")

    assert path.suffix == ".txt"
    assert histories(load_dataset(path).frame) == histories(resampled)
    split = load_split(str(path))
    item_ids = np.unique(resampled["item"])  # the loader's natural order of integer ids
    described = load_item_attributes("builtin", item_ids, str(path))
    assert split.n_users == 6
    assert described is not None and described.n_items == len(item_ids)  # item 8 dropped
