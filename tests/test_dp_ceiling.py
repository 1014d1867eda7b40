"""The DP ceiling benchmark's statistic: one unit-norm vector per user, vocabulary only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.dp_ceiling import local_ids, popular_items, transition_sums, vocabulary_scorer
from common.evaluation import target_ranks
from common.sequences import LeaveOneOutSplit


def split_of(train: list[list[int]], n_items: int = 6) -> LeaveOneOutSplit:
    """A split whose training sequences are ``train`` (targets unused here)."""
    users = len(train)
    return LeaveOneOutSplit(
        train=[np.array(sequence, dtype=np.int64) for sequence in train],
        valid_target=np.zeros(users, dtype=np.int64),
        test_target=np.zeros(users, dtype=np.int64),
        n_items=n_items,
    )


def test_each_user_adds_one_unit_norm_vector_of_weighted_transitions() -> None:
    split = split_of([[1, 2, 3, 1]])
    vocab = np.array([1, 2, 3])
    table = transition_sums(split, local_ids(split, vocab), len(vocab))
    assert np.linalg.norm(table) == pytest.approx(1.0)
    # hops: 1->2, 2->3, 3->1 (1 each); 1->3, 2->1 (1/2 each); 1->1 (1/3)
    raw = np.zeros((3, 3))
    for (a, b), weight in {(0, 1): 1, (1, 2): 1, (2, 0): 1, (0, 2): 0.5, (1, 0): 0.5}.items():
        raw[a, b] = weight
    raw[0, 0] = 1 / 3
    np.testing.assert_allclose(table, raw / np.linalg.norm(raw))


def test_items_outside_the_vocabulary_are_dropped_and_users_add_up() -> None:
    one, other = [1, 5, 2], [2, 1]
    vocab = np.array([1, 2])
    both = split_of([one, other])
    mapping = local_ids(both, vocab)
    table = transition_sums(both, mapping, 2)
    alone = transition_sums(split_of([one]), mapping, 2) + transition_sums(
        split_of([other]), mapping, 2
    )
    np.testing.assert_allclose(table, alone)
    assert table[1, 0] == pytest.approx(1.0)  # the only pair of the second user: 2 -> 1
    assert table[0, 1] == pytest.approx(1.0)  # 1 -> 2 (two steps apart around item 5)


def test_popular_items_count_users_not_clicks() -> None:
    split = split_of([[3, 3, 3, 3], [1, 2], [1, 4]])
    assert popular_items(split, 1).tolist() == [1]


def test_items_outside_the_vocabulary_rank_below_every_scored_item() -> None:
    split = split_of([[1, 2]], n_items=5)
    vocab = np.array([2, 4])
    scorer = vocabulary_scorer(split, vocab, lambda histories: torch.tensor([[-50.0, -60.0]]))
    scores = scorer([np.array([1])], None)
    ranks = target_ranks(scores, torch.tensor([3]))
    assert int(ranks[0]) == 4  # worst: ties with the other unscored items count against it
    assert int(target_ranks(scores, torch.tensor([4]))[0]) == 1
