"""Model inputs: padded item windows, next-item targets at every position, time-gap buckets.

Sequences are left-padded with 0 so the most recent item is always the last column, which
is where every model reads its prediction for the next item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SECONDS_PER_MINUTE = 60


@dataclass(frozen=True)
class TrainingWindows:
    """Sequence-to-sequence training data: ``targets[:, t]`` follows ``inputs[:, t]``.

    ``gaps`` holds log-bucketed time gaps aligned with ``inputs`` when timestamps exist.
    ``owners`` is the user index each window came from (several windows per long user).
    """

    inputs: np.ndarray
    targets: np.ndarray
    gaps: np.ndarray | None
    owners: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)


def log_bucket_gaps(times: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket the gap to the previous interaction on a log2 scale of minutes.

    Bucket 0 is padding, 1 is "no previous interaction", 2.. grow as log2(1 + minutes),
    capped at ``n_buckets - 1``.
    """
    if n_buckets < 3:
        raise ValueError(f"n_buckets must be at least 3, got {n_buckets}")
    times = np.asarray(times, dtype=np.int64)
    buckets = np.ones(len(times), dtype=np.int64)
    if len(times) > 1:
        minutes = np.maximum(np.diff(times), 0) / SECONDS_PER_MINUTE
        scaled = 2 + np.floor(np.log2(1.0 + minutes)).astype(np.int64)
        buckets[1:] = np.minimum(scaled, n_buckets - 1)
    return buckets


def _left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    """Stack rows of at most ``length`` values, right-aligned, padding with 0."""
    padded = np.zeros((len(rows), length), dtype=np.int64)
    for index, row in enumerate(rows):
        if len(row):
            padded[index, length - len(row) :] = row
    return padded


def _gap_buckets(
    sequences: list[np.ndarray], times: list[np.ndarray] | None, n_gap_buckets: int
) -> list[np.ndarray] | None:
    """Each sequence's gap buckets, or None without timestamps or gap features."""
    if times is None or not n_gap_buckets:
        return None
    return [
        log_bucket_gaps(user_times[: len(sequence)], n_gap_buckets)
        for sequence, user_times in zip(sequences, times, strict=True)
    ]


def _sequence_cuts(length: int, max_len: int) -> Iterator[tuple[slice, slice]]:
    """(inputs, targets) slices of non-overlapping windows, from the end backwards."""
    end = length
    while end >= 2:
        start = max(0, end - max_len - 1)
        yield slice(start, end - 1), slice(start + 1, end)
        end = start + 1 if start > 0 else 0


def _prefix_cuts(length: int, max_len: int) -> Iterator[tuple[slice, slice]]:
    """(inputs, target) slices: every target after the items (at most max_len) before it."""
    for end in range(1, length):
        yield slice(max(0, end - max_len), end), slice(end, end + 1)


def _cut_windows(
    sequences: list[np.ndarray],
    max_len: int,
    times: list[np.ndarray] | None,
    n_gap_buckets: int,
    cuts: Callable[[int, int], Iterator[tuple[slice, slice]]],
) -> TrainingWindows:
    """Windows of every sequence as ``cuts`` slices them, left-padded to ``max_len``."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    buckets = _gap_buckets(sequences, times, n_gap_buckets)
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    gaps: list[np.ndarray] = []
    owners: list[int] = []
    for user, sequence in enumerate(sequences):
        for source, target in cuts(len(sequence), max_len):
            inputs.append(sequence[source])
            targets.append(sequence[target])
            if buckets is not None:
                gaps.append(buckets[user][source])
            owners.append(user)
    return TrainingWindows(
        inputs=_left_pad(inputs, max_len),
        targets=_left_pad(targets, max_len),
        gaps=_left_pad(gaps, max_len) if buckets is not None else None,
        owners=np.asarray(owners, dtype=np.int64),
    )


def training_windows(
    sequences: list[np.ndarray],
    max_len: int,
    times: list[np.ndarray] | None = None,
    n_gap_buckets: int = 32,
) -> TrainingWindows:
    """Cut each training sequence into windows of ``max_len`` next-item predictions.

    Windows are taken from the end backwards without overlap, so every training target
    is predicted exactly once and the most recent window always has full context.
    ``n_gap_buckets = 0`` means no time-gap features (``times`` is then ignored).
    """
    return _cut_windows(sequences, max_len, times, n_gap_buckets, _sequence_cuts)


def prefix_windows(
    sequences: list[np.ndarray],
    max_len: int,
    times: list[np.ndarray] | None = None,
    n_gap_buckets: int = 32,
) -> TrainingWindows:
    """One window per training target: the (at most ``max_len``) items before it, with
    the target in the last column only.

    Every target is then predicted from the most recent position, as at evaluation,
    where :func:`training_windows` predicts most targets from earlier positions. Costs
    about the mean sequence length times more encoder work per epoch; the scored
    positions are the same. ``n_gap_buckets = 0`` means no time-gap features.
    """
    return _cut_windows(sequences, max_len, times, n_gap_buckets, _prefix_cuts)


def last_window(
    sequences: list[np.ndarray],
    max_len: int,
    times: list[np.ndarray] | None = None,
    n_gap_buckets: int = 32,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The last ``max_len`` items of each sequence (and their gap buckets), left-padded.

    ``n_gap_buckets = 0`` means no time-gap features (``times`` is then ignored).
    """
    items = _left_pad([sequence[-max_len:] for sequence in sequences], max_len)
    buckets = _gap_buckets(sequences, times, n_gap_buckets)
    if buckets is None:
        return items, None
    return items, _left_pad([user_buckets[-max_len:] for user_buckets in buckets], max_len)


def consecutive_cosine(items: Tensor, embeddings: Tensor) -> Tensor:
    """Cosine similarity of each item's embedding to the previous item's (0 at padding).

    An interaction feature between consecutive items: high values mean the user stays
    within a neighbourhood of the catalogue, low values mean a jump.
    """
    vectors = torch.nn.functional.normalize(embeddings[items], dim=-1)
    similarity = torch.zeros(items.shape, dtype=vectors.dtype, device=vectors.device)
    similarity[:, 1:] = (vectors[:, 1:] * vectors[:, :-1]).sum(-1)
    valid = (items[:, 1:] > 0) & (items[:, :-1] > 0)
    similarity[:, 1:] = similarity[:, 1:] * valid
    return similarity
