"""Property tests for the loaders: row order never matters, the split is leave-one-out."""

from __future__ import annotations

import tempfile
from pathlib import Path
from random import Random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.loaders import load_dataset
from common.data.sequences import SequenceDataset, build_sequences, leave_one_out_split

EVENT = st.tuples(
    st.integers(0, 12),  # user
    st.integers(0, 30),  # item
    st.one_of(st.integers(0, 40), st.floats(0, 40, allow_nan=False).map(lambda t: round(t, 3))),
)
LOGS = st.lists(EVENT, min_size=1, max_size=60)


def _load(rows: list[tuple[int, int, float]]) -> SequenceDataset:
    """Write events as a CSV with string-prefixed ids and load them back."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.csv"
        lines = [f"u{user},{item},{time}" for user, item, time in rows]
        path.write_text("\n".join(["user,item,timestamp", *lines]) + "\n")
        return build_sequences(load_dataset(path))


def _by_original_id(dataset: SequenceDataset) -> dict[str, list[str]]:
    return {
        str(user): [str(dataset.item_ids[i - 1]) for i in sequence]
        for user, sequence in zip(dataset.user_ids, dataset.sequences, strict=True)
    }


@settings(max_examples=60, deadline=None)
@given(LOGS, st.randoms(use_true_random=False))
def test_shuffled_log_loads_like_the_sorted_one(events: list, random: Random) -> None:
    shuffled = list(events)
    random.shuffle(shuffled)
    ordered = sorted(events, key=lambda e: (e[0], float(e[2]), e[1]))

    assert _by_original_id(_load(shuffled)) == _by_original_id(_load(ordered))


@settings(max_examples=60, deadline=None)
@given(LOGS)
def test_sequences_follow_time_then_numeric_item_id(events: list) -> None:
    dataset = _load(events)
    expected: dict[str, list[str]] = {}
    for user, item, _ in sorted(set(events), key=lambda e: (float(e[2]), e[1])):
        expected.setdefault(f"u{user}", []).append(str(item))
    unique = {(u, i, float(t)) for u, i, t in events}

    assert _by_original_id(dataset) == expected
    assert dataset.n_interactions == len(unique)


@settings(max_examples=60, deadline=None)
@given(LOGS)
def test_split_is_leave_one_out(events: list) -> None:
    dataset = _load(events)
    split = leave_one_out_split(dataset)

    for user, sequence in enumerate(dataset.sequences):
        if len(sequence) >= 3:
            assert list(split.train[user]) == list(sequence[:-2])
            assert (split.valid_target[user], split.test_target[user]) == tuple(sequence[-2:])
            assert list(split.inputs("test")[user]) == list(sequence[:-1])
        else:
            assert list(split.train[user]) == list(sequence)
            assert split.valid_target[user] == split.test_target[user] == 0
    assert np.array_equal(np.sort(split.evaluated_users()), split.evaluated_users())
