"""Partitioning: deterministic, disjoint, and a client sees only its own users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.partitioning import (
    count_partitions,
    load_partition,
    load_split,
    partition_of,
    partition_users,
)


@pytest.mark.parametrize(("n_users", "num_partitions"), [(1, 1), (7, 7), (10, 3), (943, 20)])
def test_partitions_cover_every_user_once_and_match_one_partition(
    n_users: int, num_partitions: int
) -> None:
    blocks = partition_users(n_users, num_partitions, seed=3)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(n_users))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    for index, block in enumerate(blocks):
        np.testing.assert_array_equal(partition_of(n_users, num_partitions, index, seed=3), block)


def test_partitions_are_deterministic_per_seed() -> None:
    first = partition_users(50, 5, seed=1)
    again = partition_users(50, 5, seed=1)
    other = partition_users(50, 5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_count_partitions_per_mode() -> None:
    assert count_partitions("cross-device", 943) == 943
    assert count_partitions("cross-silo", 22_363, users_per_client=1120) == 20
    with pytest.raises(ValueError, match="partition mode must be one of"):
        count_partitions("mesh", 10)
    with pytest.raises(ValueError, match="partition_id must be in 0..4"):
        partition_of(10, 5, 5, seed=0)
    with pytest.raises(ValueError, match="num_partitions must be in 1..10"):
        partition_users(10, 11, seed=0)


def test_client_reads_only_its_own_users(tmp_path: Path) -> None:
    # Every user has private items: user k visits items k*10+1 .. k*10+6.
    path = tmp_path / "private.csv"
    rows = [f"u{k:02d},{k * 10 + t + 1},{t}" for k in range(12) for t in range(6)]
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    split = load_split(str(path))
    item_owner = {int(item): user for user, seq in enumerate(split.inputs("test")) for item in seq}
    item_owner.update({int(t): u for u, t in enumerate(split.test_target)})

    partition = load_partition(str(path), num_partitions=4, partition_id=2, seed=7)

    own = set(partition.users.tolist())
    assert len(own) == 3 and partition.split.n_users == 3
    windows = partition.training_windows(max_len=4)
    seen = set(np.concatenate([*partition.split.train, windows.inputs.ravel()]).tolist()) - {0}
    seen |= set(partition.split.valid_target.tolist()) | set(partition.split.test_target.tolist())
    assert {item_owner[item] for item in seen} == own
    np.testing.assert_array_equal(partition.users, partition_of(12, 4, 2, seed=7))


def test_dataset_is_loaded_once_per_process(cycle_log: Path) -> None:
    before = load_split.cache_info().hits
    first = load_split(str(cycle_log))
    second = load_split(str(cycle_log))
    assert first is second
    assert load_split.cache_info().hits == before + 1
