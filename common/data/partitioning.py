"""Split users into federated clients, and give one client only its own users' data.

Two shapes of federation share one rule: a seeded permutation of user indices cut
into ``num_partitions`` contiguous, near-equal blocks.

- ``cross-device``: one client per user (``num_partitions == n_users``).
- ``cross-silo``: edge nodes holding ``users_per_client`` users each (the last may
  hold fewer), training on their users' pooled data.
- ``cohort``: the same blocks, but each block is an edge aggregator that trains every
  user's update separately (users stay the logical clients; :mod:`common.training.cohort`).

The data set is read once per process (:func:`load_split`, an explicit
``lru_cache``); a client then keeps index arrays and references to its users'
sequences only, so memory does not grow with clients x data.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from common.data.features import TrainingWindows, training_windows
from common.data.loaders import dataset_log_format, load_dataset
from common.data.sequences import LeaveOneOutSplit, build_sequences, leave_one_out_split

PARTITION_MODES = ("cross-device", "cross-silo", "cohort")


def count_partitions(mode: str, n_users: int, users_per_client: int = 1) -> int:
    """Number of clients for a partition mode over ``n_users`` users."""
    if mode not in PARTITION_MODES:
        raise ValueError(
            f"partition mode must be one of {', '.join(PARTITION_MODES)}, got {mode!r}"
        )
    if n_users < 1:
        raise ValueError(f"n_users must be positive, got {n_users}")
    if mode == "cross-device":
        return n_users
    if users_per_client < 1:
        raise ValueError(f"users_per_client must be positive, got {users_per_client}")
    return math.ceil(n_users / users_per_client)


def _check_partitioning(n_users: int, num_partitions: int) -> None:
    if n_users < 1:
        raise ValueError(f"n_users must be positive, got {n_users}")
    if not 1 <= num_partitions <= n_users:
        raise ValueError(
            f"num_partitions must be in 1..{n_users} (one user at least), got {num_partitions}"
        )


def partition_users(n_users: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """All partitions: sorted user-index arrays, disjoint, covering every user once."""
    _check_partitioning(n_users, num_partitions)
    order = np.random.default_rng(seed).permutation(n_users)
    return [np.sort(block) for block in np.array_split(order, num_partitions)]


def partition_of(n_users: int, num_partitions: int, partition_id: int, seed: int) -> np.ndarray:
    """The sorted user indices of one partition (same result as :func:`partition_users`)."""
    _check_partitioning(n_users, num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in 0..{num_partitions - 1}, got {partition_id}")
    order = np.random.default_rng(seed).permutation(n_users)
    base, extra = divmod(n_users, num_partitions)  # np.array_split's block sizes
    start = partition_id * base + min(partition_id, extra)
    size = base + (1 if partition_id < extra else 0)
    return np.sort(order[start : start + size])


@functools.lru_cache(maxsize=2)
def load_split(dataset: str, columns: str = "", time_unit: str = "") -> LeaveOneOutSplit:
    """Load, sequence and split a data set once per process (keyed by name or path).

    ``columns`` and ``time_unit`` are the run config's ``dataset-columns`` and
    ``dataset-time-unit`` (:mod:`common.data.log_format`).
    """
    log = load_dataset(dataset, dataset_log_format(dataset, columns, time_unit))
    return leave_one_out_split(build_sequences(log, name=dataset))


def subset_split(split: LeaveOneOutSplit, users: np.ndarray) -> LeaveOneOutSplit:
    """The leave-one-out split restricted to ``users`` (references, no copies of data)."""
    users = np.asarray(users, dtype=np.int64)
    if users.ndim != 1 or (len(users) and (users.min() < 0 or users.max() >= split.n_users)):
        raise ValueError(f"users must be a 1-D array of indices in 0..{split.n_users - 1}")
    return LeaveOneOutSplit(
        train=[split.train[u] for u in users],
        valid_target=split.valid_target[users],
        test_target=split.test_target[users],
        n_items=split.n_items,
        times=[split.times[u] for u in users] if split.times is not None else None,
    )


@dataclass(frozen=True)
class ClientPartition:
    """One client's users (global indices) and their part of the leave-one-out split."""

    partition_id: int
    users: np.ndarray
    split: LeaveOneOutSplit

    def training_sequences(
        self, through_validation: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """This client's users' training sequences and their times (None without times);
        ``through_validation`` appends each user's validation item: the inputs the test
        stage (and the statistics release devices use) sees, never the test item."""
        if through_validation:
            return self.split.inputs("test"), self.split.input_times("test")
        return self.split.train, self.split.times

    def training_windows(
        self, max_len: int, n_gap_buckets: int = 0, through_validation: bool = False
    ) -> TrainingWindows:
        """Training windows built from :meth:`training_sequences` only."""
        sequences, times = self.training_sequences(through_validation)
        return training_windows(sequences, max_len, times, n_gap_buckets)


def load_partition(
    dataset: str,
    num_partitions: int,
    partition_id: int,
    seed: int,
    columns: str = "",
    time_unit: str = "",
) -> ClientPartition:
    """The data of one client: its users' sequences and targets, nothing else."""
    split = load_split(dataset, columns, time_unit)
    users = partition_of(split.n_users, num_partitions, partition_id, seed)
    return ClientPartition(partition_id, users, subset_split(split, users))
