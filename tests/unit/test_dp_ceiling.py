"""The DP ceiling benchmark's statistic: one unit-norm vector per user, vocabulary only."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from benchmarks.dp_ceiling import (
    PairRows,
    clipped_product,
    fedavg_settings,
    local_ids,
    pair_rows,
    popular_items,
    power_scorer,
    transition_sums,
    vocabulary_scorer,
)
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.ranking import target_ranks


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


def test_each_users_pair_matrix_is_symmetric_with_unit_norm() -> None:
    split = split_of([[1, 2, 3, 1], [4, 5]])
    rows = pair_rows(split)
    for user in (0, 1):
        full = _dense(rows, user)
        assert np.linalg.norm(full) == pytest.approx(1.0)
        np.testing.assert_allclose(full, full.T)
    # user 0: 1-2, 2-3, 3-1 at distance 1; 1-3, 2-1 at 2; 1-1 at 3 (both directions)
    raw = np.zeros((7, 7))
    for (a, b), weight in {(1, 2): 1.5, (1, 3): 1.5, (2, 3): 1.0, (1, 1): 2 / 3}.items():
        raw[a, b] = raw[b, a] = weight
    np.testing.assert_allclose(_dense(rows, 0), raw / np.linalg.norm(raw))


def test_clipped_product_bounds_every_user_and_adds_the_others_exactly() -> None:
    split = split_of([[1, 2, 3, 4, 5, 6], [2, 1], [5, 6]])
    rows = pair_rows(split)
    q = np.random.default_rng(0).standard_normal((7, 3))
    per_user = [clipped_product(_only(rows, user), q, np.inf, 3) for user in range(3)]
    norms = [np.linalg.norm(part) for part in per_user]
    clip = float(np.median(norms))
    total = clipped_product(rows, q, clip, 3)
    expected = sum(part * min(1.0, clip / norm) for part, norm in zip(per_user, norms, strict=True))
    np.testing.assert_allclose(total, expected)
    dense = sum(_dense(rows, user) for user in range(3)) @ q  # unclipped = (sum M_u) q
    np.testing.assert_allclose(clipped_product(rows, q, np.inf, 3), dense)


def test_power_scorer_weights_the_last_items_by_distance() -> None:
    left = np.zeros((5, 2))
    left[1], left[2], left[3] = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]
    right = np.array([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    scores = power_scorer(left, right)([np.array([4, 1, 2, 3])], None)
    query = left[3] + left[2] / 2 + left[1] / 3  # item 4 is 4 steps back: left out
    np.testing.assert_allclose(scores[0, 1:].numpy(), right[1:] @ query, rtol=1e-6)
    assert scores[0, 0] == float("-inf")


def _only(rows: PairRows, user: int) -> PairRows:
    keep = rows.users == user
    return PairRows(rows.matrix[keep], rows.users[keep], rows.items[keep])


def _dense(rows: PairRows, user: int) -> np.ndarray:
    full = np.zeros((rows.matrix.shape[1],) * 2)
    keep = rows.users == user
    full[rows.items[keep]] = rows.matrix[keep].toarray()
    return full


def test_a_server_optimizer_we_do_not_have_stops_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="dp_ceiling")
    assert fedavg_settings(["server=momentum"], parser).server == "momentum"
    with pytest.raises(SystemExit):
        fedavg_settings(["server=sgd"], parser)
    assert "server must be adam or momentum, got 'sgd'" in capsys.readouterr().err
