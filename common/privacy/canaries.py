"""Canary users for the empirical privacy audit: make them, plant half, score them all.

A canary is a fabricated **user** (user-level DP protects users): a random sequence of
distinct catalogue items. Half of the canaries, chosen at random, are appended to the
click log as ordinary users; the other half are never seen by training. Planted
canaries then go through exactly what real users go through (leave-one-out split,
partitioning, cohort sampling, clipping and noise) and count in the number of users
that sets the default delta.

After training, every canary is scored by the model's loss on it: the mean next-item
cross-entropy over the part of its sequence that leave-one-out gives to training (the
last two items are validation and test targets, held out for members and non-members
alike). Membership inference on those losses lives in :mod:`common.privacy.membership_inference`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.data.features import training_windows
from common.data.loaders import ClickLog
from common.data.sequences import MIN_EVALUATED_LENGTH, SequenceDataset, leave_one_out_split
from common.evaluation.scoring import evaluation_mode
from common.federation.checkpoints import Checkpoint, ItemId
from common.models.base import row_cross_entropy
from common.training.centralized import trimmed_batch

MIN_CANARY_LENGTH = MIN_EVALUATED_LENGTH + 1  # two trained positions, then the two targets
CANARY_PREFIX = "canary-"
SCORING_ROWS = 256


@dataclass(frozen=True)
class CanarySet:
    """Canary users: original user id, item ids in time order, and whether planted."""

    user_ids: list[ItemId]
    sequences: list[list[ItemId]]
    planted: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        if not len(self.user_ids) == len(self.sequences) == len(self.planted):
            raise ValueError("user_ids, sequences and planted must have one entry per canary")

    def planted_users(self) -> list[tuple[ItemId, list[ItemId]]]:
        """(user id, items) of the canaries that go into the click log."""
        return [
            (user, items)
            for user, items, planted in zip(
                self.user_ids, self.sequences, self.planted, strict=True
            )
            if planted
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what was planted, so that an audit can be checked or repeated."""
        return {
            "seed": self.seed,
            "count": len(self.user_ids),
            "planted": int(self.planted.sum()),
            "canaries": [
                {"user": user, "planted": bool(planted), "items": items}
                for user, items, planted in zip(
                    self.user_ids, self.sequences, self.planted, strict=True
                )
            ],
        }


def _python_id(value: Any) -> ItemId:
    """A numpy scalar id as a plain int or str (for JSON and catalogue lookups)."""
    return value if isinstance(value, str) else int(value)


def canary_user_ids(existing: np.ndarray, count: int) -> list[ItemId]:
    """Ids no real user has: after the largest integer id, else ``canary-<n>`` strings."""
    if np.issubdtype(existing.dtype, np.integer):
        first = int(existing.max()) + 1
        return list(range(first, first + count))
    width = len(str(count - 1))
    ids: list[ItemId] = [f"{CANARY_PREFIX}{index:0{width}d}" for index in range(count)]
    taken = set(existing.tolist()) & set(ids)
    if taken:
        raise ValueError(f"the click log already has users named like canaries: {sorted(taken)[0]}")
    return ids


def make_canaries(
    user_ids: np.ndarray, item_ids: np.ndarray, count: int, length: int, seed: int
) -> CanarySet:
    """``count`` canaries of ``length`` distinct random items; a random half is planted.

    ``user_ids`` and ``item_ids`` are the data set's original ids (the catalogue the
    canaries draw from). Everything is drawn from ``seed``.
    """
    if count < 4 or count % 2:
        raise ValueError(f"the number of canaries must be even and at least 4, got {count}")
    if not MIN_CANARY_LENGTH <= length <= len(item_ids):
        raise ValueError(
            f"canary length must be in {MIN_CANARY_LENGTH}..{len(item_ids)} (the catalogue "
            f"size), got {length}"
        )
    rng = np.random.default_rng([seed, 0xCA2A])
    sequences = [
        [_python_id(item_ids[i]) for i in rng.choice(len(item_ids), length, replace=False)]
        for _ in range(count)
    ]
    planted = np.zeros(count, dtype=bool)
    planted[rng.permutation(count)[: count // 2]] = True
    return CanarySet(canary_user_ids(user_ids, count), sequences, planted, seed)


def write_planted_log(source: Path, log: ClickLog, canaries: CanarySet, folder: Path) -> Path:
    """The click log plus the planted canaries, in the source's format, under ``folder``.

    ``u.data`` and Beauty-style ``.txt`` files are copied byte for byte and the canaries
    appended, so real users stay exactly as they were (same ids, same order); other
    formats are rewritten as CSV (user, item[, timestamp]) from the loaded log. Canary
    timestamps are 1, 2, ... (only their order matters).
    """
    folder.mkdir(parents=True, exist_ok=True)
    planted = canaries.planted_users()
    if source.name == "u.data" or source.suffix.lower() == ".txt":
        target = folder / source.name
        shutil.copyfile(source, target)
        if source.name == "u.data":
            lines = [
                f"{user}\t{item}\t0\t{time}"
                for user, items in planted
                for time, item in enumerate(items, start=1)
            ]
        else:
            lines = [" ".join(map(str, [user, *items])) for user, items in planted]
        with target.open("a+b") as handle:
            handle.seek(0, 2)
            if handle.tell():
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(("\n".join(lines) + "\n").encode())
        return target
    rows = [
        {"user": user, "item": item, "timestamp": time}
        for user, items in planted
        for time, item in enumerate(items, start=1)
    ]
    added = pd.DataFrame(rows)
    if not log.has_timestamps:
        added = added.drop(columns="timestamp")
    target = folder / "clicks.csv"
    pd.concat([log.frame, added.astype({"user": str, "item": str})]).to_csv(target, index=False)
    return target


def canary_losses(checkpoint: Checkpoint, sequences: list[list[ItemId]]) -> np.ndarray:
    """Mean next-item cross-entropy of the checkpoint's model on each canary's training part.

    The split is the protocol's own (:func:`common.data.sequences.leave_one_out_split`), the
    windows are those training builds, the model is in evaluation mode (no dropout), and
    each window is scored without padding, so a canary's loss does not depend on which
    other canaries share its batch.
    """
    index_of = {item: index for index, item in enumerate(checkpoint.item_ids, start=1)}
    unknown = {item for items in sequences for item in items if item not in index_of}
    if unknown:
        raise ValueError(
            f"{len(unknown)} canary item(s) not in the checkpoint's catalogue, "
            f"e.g. {min(map(str, unknown))}"
        )
    indexed = [
        np.asarray([index_of[item] for item in items], dtype=np.int64) for items in sequences
    ]
    canaries = SequenceDataset(
        name="canaries",
        sequences=indexed,
        timestamps=[np.arange(1, len(items) + 1, dtype=np.int64) for items in indexed],
        user_ids=np.arange(len(indexed)),
        item_ids=np.asarray(checkpoint.item_ids),
    )
    split = leave_one_out_split(canaries)
    config = checkpoint.model_config
    windows = training_windows(split.train, config.max_len, split.times, config.n_gap_buckets)
    model = checkpoint.build_model()
    totals = np.zeros(len(indexed))
    lengths = (windows.inputs > 0).sum(1)
    with evaluation_mode(model), torch.no_grad():
        for length in np.unique(lengths):  # rows of one length: no padding, no batch effect
            same = np.flatnonzero(lengths == length)
            for start in range(0, len(same), SCORING_ROWS):
                rows = same[start : start + SCORING_ROWS]
                items, targets, gaps = trimmed_batch(windows, rows)
                summed = row_cross_entropy(model, model(items, gaps), targets)
                np.add.at(totals, windows.owners[rows], summed.numpy())
    counts = np.bincount(
        windows.owners, weights=(windows.targets > 0).sum(1), minlength=len(indexed)
    )
    return totals / counts
