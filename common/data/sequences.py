"""Per-user interaction sequences and the leave-one-out split of the evaluation protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from common.data.ids import natural_ranks
from common.data.loaders import ClickLog, DataFormatError

logger = logging.getLogger(__name__)

MIN_EVALUATED_LENGTH = 3  # a training item, a validation target and a test target


@dataclass(frozen=True)
class SequenceDataset:
    """Time-ordered item sequences per user, ids remapped to 1..n_items (0 = padding).

    ``item_ids[i - 1]`` is the original id of item index ``i``; ``user_ids[u]`` the
    original id of user ``u``. ``timestamps`` is aligned with ``sequences`` when the
    source had timestamps.
    """

    name: str
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] | None
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        """Number of users (sequences)."""
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        """Number of distinct items, excluding the padding index."""
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        """Total number of interactions over all users."""
        return int(sum(len(sequence) for sequence in self.sequences))


def build_sequences(log: ClickLog, name: str | None = None) -> SequenceDataset:
    """Remap ids and order each user's interactions by (timestamp, item id).

    Times are compared at full resolution (sub-second included); equal times are broken by
    item id in natural order (``9`` before ``10``, see :mod:`common.data.ids`). Without
    timestamps the file order is the time order (stable). Users and items are numbered by
    sorted original id, so the mapping is deterministic. ``timestamps`` holds whole
    seconds (rounded down), which is what the time-gap features use.
    """
    frame = log.frame
    if frame.empty:
        raise DataFormatError(f"{log.source}: no interactions found")
    user_ids, user_index = np.unique(frame["user"].to_numpy(), return_inverse=True)
    item_ids, item_index = np.unique(frame["item"].to_numpy(), return_inverse=True)
    items = item_index.astype(np.int64) + 1
    users = user_index.astype(np.int64)
    order_keys: list[np.ndarray] = [np.arange(len(frame))]
    times: np.ndarray | None = None
    if log.has_timestamps:
        exact = frame["timestamp"].to_numpy(dtype=np.float64)
        order_keys = [natural_ranks(item_ids)[item_index], exact]
        times = np.floor(exact).astype(np.int64)
    order = np.lexsort([*order_keys, users])  # last key is primary
    sorted_users = users[order]
    boundaries = np.flatnonzero(np.diff(sorted_users)) + 1
    sequences = np.split(items[order], boundaries)
    timestamps = np.split(times[order], boundaries) if times is not None else None
    return SequenceDataset(
        name=name or log.source,
        sequences=sequences,
        timestamps=timestamps,
        user_ids=user_ids,
        item_ids=item_ids,
    )


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Last item = test target, second to last = validation target, the rest = training.

    Users shorter than three interactions keep everything for training and have target
    0 (no target) in both validation and test.
    """

    train: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    n_items: int
    times: list[np.ndarray] | None = None

    @property
    def n_users(self) -> int:
        """Number of users, evaluated or not."""
        return len(self.train)

    def evaluated_users(self) -> np.ndarray:
        """Indices of users that have validation and test targets."""
        return np.flatnonzero(self.test_target > 0)

    def inputs(self, stage: str) -> list[np.ndarray]:
        """Model inputs per user: training history, plus the validation item for test."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return [
                np.append(history, target) if target > 0 else history
                for history, target in zip(self.train, self.valid_target, strict=True)
            ]
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def input_times(self, stage: str) -> list[np.ndarray] | None:
        """Timestamps aligned with :meth:`inputs` (None when the data has none)."""
        if self.times is None:
            return None
        return [
            times[: len(items)] for times, items in zip(self.times, self.inputs(stage), strict=True)
        ]

    def targets(self, stage: str) -> np.ndarray:
        """Target item per user for a stage (0 = user not evaluated)."""
        if stage == "valid":
            return self.valid_target
        if stage == "test":
            return self.test_target
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def leave_one_out_split(dataset: SequenceDataset) -> LeaveOneOutSplit:
    """Split every user's sequence by the fixed evaluation protocol."""
    train: list[np.ndarray] = []
    valid_target = np.zeros(dataset.n_users, dtype=np.int64)
    test_target = np.zeros(dataset.n_users, dtype=np.int64)
    too_short = 0
    for user, sequence in enumerate(dataset.sequences):
        evaluated = len(sequence) >= MIN_EVALUATED_LENGTH
        cut = len(sequence) - 2 if evaluated else len(sequence)
        train.append(sequence[:cut])
        if evaluated:
            valid_target[user] = sequence[-2]
            test_target[user] = sequence[-1]
        else:
            too_short += 1
    if too_short:
        logger.warning(
            "%d of %d users have fewer than %d interactions: kept for training, not evaluated",
            too_short,
            dataset.n_users,
            MIN_EVALUATED_LENGTH,
        )
    return LeaveOneOutSplit(
        train=train,
        valid_target=valid_target,
        test_target=test_target,
        n_items=dataset.n_items,
        times=dataset.timestamps,
    )
