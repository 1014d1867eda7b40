"""Feature extraction: training windows, last windows, time-gap buckets, item similarity."""

from __future__ import annotations

import numpy as np
import torch

from common.data.features import (
    consecutive_cosine,
    last_window,
    log_bucket_gaps,
    prefix_windows,
    training_windows,
)


def test_short_sequence_gives_one_left_padded_window() -> None:
    windows = training_windows([np.array([4, 5, 6])], max_len=4)
    assert windows.inputs.tolist() == [[0, 0, 4, 5]]
    assert windows.targets.tolist() == [[0, 0, 5, 6]]
    assert windows.gaps is None


def test_long_sequence_covers_every_target_exactly_once() -> None:
    sequence = np.arange(1, 12)  # 10 next-item targets: 2..11
    windows = training_windows([sequence], max_len=4)
    targets = sorted(t for row in windows.targets for t in row if t > 0)
    assert targets == list(range(2, 12))
    assert windows.inputs[0].tolist() == [7, 8, 9, 10]  # the most recent window first
    assert windows.owners.tolist() == [0, 0, 0]


def test_single_item_user_has_no_window() -> None:
    windows = training_windows([np.array([3]), np.array([1, 2])], max_len=3)
    assert windows.owners.tolist() == [1]


def test_gap_buckets_are_log_scaled_minutes() -> None:
    times = np.array([0, 0, 60, 60 + 3 * 60, 60 + 3 * 60 + 10**9])
    buckets = log_bucket_gaps(times, n_buckets=8)
    assert buckets.tolist() == [1, 2, 3, 4, 7]


def test_windows_carry_aligned_gaps() -> None:
    windows = training_windows([np.array([1, 2, 3])], 3, times=[np.array([0, 60, 120])])
    assert windows.gaps is not None
    assert windows.gaps.tolist() == [[0, 1, 3]]


def test_last_window_truncates_and_pads() -> None:
    items, gaps = last_window([np.array([1, 2, 3, 4]), np.array([5])], max_len=3)
    assert items.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert gaps is None


def test_consecutive_cosine_is_zero_at_padding_and_one_for_same_direction() -> None:
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    similarity = consecutive_cosine(torch.tensor([[0, 1, 2, 3]]), embeddings)
    assert torch.allclose(similarity, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_zero_gap_buckets_means_no_gap_features() -> None:
    times = [np.array([0, 60, 120])]
    windows = training_windows([np.array([1, 2, 3])], 3, times=times, n_gap_buckets=0)
    _, gaps = last_window([np.array([1, 2, 3])], 3, times=times, n_gap_buckets=0)
    assert windows.gaps is None
    assert gaps is None


def test_prefix_windows_predict_every_target_once_from_the_last_position() -> None:
    sequences = [np.arange(1, 8), np.array([9]), np.array([3, 4])]
    windows = prefix_windows(sequences, max_len=4)
    assert windows.owners.tolist() == [0] * 6 + [2]
    assert (windows.targets[:, :-1] == 0).all()
    assert windows.targets[:, -1].tolist() == [2, 3, 4, 5, 6, 7, 4]
    assert windows.inputs[0].tolist() == [0, 0, 0, 1]
    assert windows.inputs[5].tolist() == [3, 4, 5, 6]  # truncated to the last max_len
    assert windows.inputs[6].tolist() == [0, 0, 0, 3]
    # the same targets as the sequence windows, each once
    sequence_targets = training_windows(sequences, max_len=4).targets
    assert sorted(windows.targets[:, -1]) == sorted(sequence_targets[sequence_targets > 0])


def test_prefix_windows_carry_aligned_gaps() -> None:
    times = [np.array([0, 60, 120])]
    windows = prefix_windows([np.array([1, 2, 3])], 3, times=times, n_gap_buckets=8)
    assert windows.gaps is not None
    assert windows.gaps.tolist() == [[0, 0, 1], [0, 1, 3]]
    assert prefix_windows([np.array([1, 2, 3])], 3, times=times, n_gap_buckets=0).gaps is None
