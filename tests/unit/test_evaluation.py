"""Tests for common.evaluation.ranking: full ranking, metric accumulation and long-horizon hits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.evaluation.ranking import (
    RankingAccumulator,
    long_horizon_hits,
    n_candidates,
    target_ranks,
)


def _row(values: list[float]) -> torch.Tensor:
    """One-row score matrix; values[0] is the padding column."""
    return torch.tensor([values], dtype=torch.float32)


# Column 0 is padding and deliberately the highest score: it must never count.
BASE_ROW = [100.0, 0.1, 0.5, 0.3, 0.9, 0.2]


# --------------------------------------------------------------------------- target_ranks


@pytest.mark.parametrize(("target", "expected"), [(4, 0), (2, 1), (3, 2), (5, 3), (1, 4)])
def test_target_ranks_hand_computed(target: int, expected: int) -> None:
    # Prepare
    scores = _row(BASE_ROW)
    # Execute
    ranks = target_ranks(scores, torch.tensor([target]))
    # Assert
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == [expected]


def test_target_ranks_batch_of_rows() -> None:
    # Prepare
    scores = torch.tensor([BASE_ROW, [0.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    # Execute
    ranks = target_ranks(scores, torch.tensor([3, 5]))
    # Assert
    assert ranks.tolist() == [2, 4]


def test_constant_scores_give_worst_rank() -> None:
    # Prepare
    scores = torch.full((3, 6), 0.7)
    # Execute
    ranks = target_ranks(scores, torch.tensor([1, 3, 5]))
    # Assert: every other candidate ties with the target and counts against it
    assert ranks.tolist() == [4, 4, 4]


def test_partial_ties_counted_against_model() -> None:
    # Prepare: items 1 and 4 tie with target 2, item 3 and 5 are below
    scores = _row([0.0, 0.5, 0.5, 0.1, 0.5, 0.0])
    # Execute
    ranks = target_ranks(scores, torch.tensor([2]))
    # Assert
    assert ranks.tolist() == [2]


def test_minus_inf_target_gets_worst_rank() -> None:
    # Prepare
    scores = _row([0.0, -math.inf, 0.5, -math.inf, 0.9, 0.2])
    # Execute
    ranks = target_ranks(scores, torch.tensor([1]))
    # Assert
    assert ranks.tolist() == [4]


def test_exclusion_removes_items_but_never_target() -> None:
    # Prepare: history holds item 4 (the best), the target 3 itself and padding
    scores = _row(BASE_ROW)
    exclude = [np.array([4, 3, 0, 4])]
    # Execute
    ranks = target_ranks(scores, torch.tensor([3]), exclude)
    counts = n_candidates(5, torch.tensor([3]), exclude)
    # Assert: only item 2 still beats target 3; target 3 is still ranked
    assert ranks.tolist() == [1]
    assert counts.tolist() == [4]


def test_exclusion_accepts_tensors_and_empty_arrays() -> None:
    # Prepare
    scores = torch.tensor([BASE_ROW, BASE_ROW])
    exclude: list[np.ndarray | torch.Tensor] = [torch.tensor([2, 4]), np.array([])]
    targets = torch.tensor([1, 1])
    # Execute
    ranks = target_ranks(scores, targets, exclude)
    counts = n_candidates(5, targets, exclude)
    # Assert
    assert ranks.tolist() == [2, 4]
    assert counts.tolist() == [3, 5]


def test_n_candidates_without_exclusion_is_n_items() -> None:
    # Prepare
    targets = torch.tensor([1, 2, 3])
    # Execute
    counts = n_candidates(7, targets)
    # Assert
    assert counts.tolist() == [7, 7, 7]


def test_target_ranks_does_not_modify_scores() -> None:
    # Prepare
    scores = torch.tensor([BASE_ROW, BASE_ROW])
    before = scores.clone()
    # Execute
    target_ranks(scores, torch.tensor([3, 4]), [np.array([1, 2]), np.array([4])])
    # Assert
    assert torch.equal(scores, before)


@pytest.mark.parametrize(
    ("scores", "targets", "exclude", "message"),
    [
        (torch.zeros(6), torch.tensor([1]), None, "shape"),
        (torch.zeros(1, 6, dtype=torch.long), torch.tensor([1]), None, "floating"),
        (_row([0.0, float("nan"), 0.1, 0.2, 0.3, 0.4]), torch.tensor([2]), None, "NaN"),
        (_row(BASE_ROW), torch.tensor([0]), None, "1..5"),
        (_row(BASE_ROW), torch.tensor([6]), None, "1..5"),
        (_row(BASE_ROW), torch.tensor([1, 2]), None, "shape"),
        (_row(BASE_ROW), torch.tensor([1.0]), None, "integer"),
        (_row(BASE_ROW), torch.tensor([1]), [np.array([6])], "0..5"),
        (_row(BASE_ROW), torch.tensor([1]), [np.array([1.5])], "integer"),
        (_row(BASE_ROW), torch.tensor([1]), [], "one id array per row"),
    ],
)
def test_target_ranks_rejects_bad_arguments(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: list[np.ndarray] | None,
    message: str,
) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        target_ranks(scores, targets, exclude)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data(), n_items=st.integers(min_value=1, max_value=8))
def test_rank_bounds_brute_force_and_exclusion_monotone(data: st.DataObject, n_items: int) -> None:
    # Prepare: small integer scores so ties are frequent
    values = data.draw(st.lists(st.integers(0, 3), min_size=n_items + 1, max_size=n_items + 1))
    target = data.draw(st.integers(1, n_items))
    excluded = data.draw(st.lists(st.integers(0, n_items), max_size=2 * n_items))
    scores = torch.tensor([values], dtype=torch.float64)
    targets = torch.tensor([target])
    exclude = [np.array(excluded, dtype=np.int64)]
    # Execute
    rank_all = int(target_ranks(scores, targets)[0])
    rank_ex = int(target_ranks(scores, targets, exclude)[0])
    cands = int(n_candidates(n_items, targets, exclude)[0])
    # Assert
    removed = {j for j in excluded if j not in (0, target)}
    expected = sum(
        1
        for j in range(1, n_items + 1)
        if j != target and j not in removed and values[j] >= values[target]
    )
    assert rank_ex == expected
    assert cands == n_items - len(removed)
    assert 0 <= rank_ex <= cands - 1
    assert 0 <= rank_all <= n_items - 1
    assert rank_ex <= rank_all


# --------------------------------------------------------------------- RankingAccumulator


def test_accumulator_hand_computed_metrics() -> None:
    # Prepare
    acc = RankingAccumulator()
    ranks = torch.tensor([0, 1, 4, 9])
    cands = torch.tensor([5, 5, 5, 10])
    # Execute
    acc.add(ranks, cands)
    result = acc.result()
    # Assert
    ndcg5 = 1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(6)
    assert result["count"] == 4.0
    assert result["hr@5"] == pytest.approx(3 / 4)
    assert result["hr@10"] == pytest.approx(1.0)
    assert result["hr@20"] == pytest.approx(1.0)
    assert result["ndcg@5"] == pytest.approx(ndcg5 / 4)
    assert result["ndcg@10"] == pytest.approx((ndcg5 + 1.0 / math.log2(11)) / 4)
    assert result["ndcg@20"] == pytest.approx((ndcg5 + 1.0 / math.log2(11)) / 4)
    assert result["mrr"] == pytest.approx((1.0 + 0.5 + 0.2 + 0.1) / 4)
    assert result["auc"] == pytest.approx((1.0 + 0.75 + 0.0 + 0.0) / 4)


def test_accumulator_single_rank_ndcg_is_one_over_log2_3() -> None:
    # Prepare
    acc = RankingAccumulator()
    # Execute
    acc.add(torch.tensor([1]), torch.tensor([100]))
    result = acc.result()
    # Assert
    assert result["ndcg@5"] == pytest.approx(1.0 / math.log2(3))
    assert result["auc"] == pytest.approx(1.0 - 1.0 / 99)


def test_accumulator_single_candidate_auc_is_one() -> None:
    # Prepare
    acc = RankingAccumulator()
    # Execute
    acc.add(torch.tensor([0]), torch.tensor([1]))
    # Assert
    assert acc.result()["auc"] == 1.0


def test_empty_accumulator_result_is_zero() -> None:
    # Prepare
    acc = RankingAccumulator()
    # Execute
    result = acc.result()
    # Assert
    assert set(result) == {
        "hr@5",
        "hr@10",
        "hr@20",
        "ndcg@5",
        "ndcg@10",
        "ndcg@20",
        "mrr",
        "auc",
        "count",
    }
    assert all(value == 0.0 for value in result.values())


def test_merge_equals_single_pass_over_concatenation() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(0)
    cands = torch.randint(1, 50, (200,), generator=gen)
    ranks = (torch.rand(200, generator=gen) * cands).long()
    whole, left, right = RankingAccumulator(), RankingAccumulator(), RankingAccumulator()
    # Execute
    whole.add(ranks, cands)
    left.add(ranks[:73], cands[:73])
    right.add(ranks[73:], cands[73:])
    merged = left.merge(right)
    # Assert
    assert merged is left
    assert merged.count == whole.count == 200
    expected = whole.result()
    for key, value in merged.result().items():
        assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-12)


def test_sums_round_trip() -> None:
    # Prepare
    acc = RankingAccumulator()
    acc.add(torch.tensor([0, 3, 7, 25]), torch.tensor([30, 30, 30, 30]))
    # Execute
    sums = acc.to_sums()
    rebuilt = RankingAccumulator.from_sums({**sums, "train_loss": 0.3})
    # Assert
    assert all(type(value) is float for value in sums.values())
    assert sums["count"] == 4.0
    assert sums["sum_hr@5"] == 2.0
    assert rebuilt == acc
    assert rebuilt.result() == acc.result()


@pytest.mark.parametrize(
    ("sums", "message"),
    [
        ({"sum_hr@5": 1.0, "sum_ndcg@5": 1.0, "sum_rr": 1.0}, "missing"),
        ({"count": 1.0, "sum_rr": 1.0, "sum_auc": 1.0}, "no 'sum_hr@K'"),
        ({"count": 1.0, "sum_hr@5": 1.0, "sum_rr": 1.0, "sum_auc": 1.0}, "sum_ndcg@5"),
        ({"count": 1.5, "sum_hr@5": 1.0, "sum_ndcg@5": 1.0, "sum_rr": 1, "sum_auc": 1}, "count"),
        ({"count": 1.0, "sum_hr@x": 1.0, "sum_rr": 1.0, "sum_auc": 1.0}, "unrecognised"),
    ],
)
def test_from_sums_rejects_bad_dicts(sums: dict[str, float], message: str) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        RankingAccumulator.from_sums(sums)


@pytest.mark.parametrize(
    ("ranks", "cands", "message"),
    [
        (torch.tensor([5]), torch.tensor([5]), "n_candidates - 1"),
        (torch.tensor([-1]), torch.tensor([5]), ">= 0"),
        (torch.tensor([0]), torch.tensor([0]), ">= 1"),
        (torch.tensor([0, 1]), torch.tensor([5]), "same shape"),
        (torch.tensor([0.0]), torch.tensor([5]), "integer"),
    ],
)
def test_accumulator_add_rejects_bad_arguments(
    ranks: torch.Tensor, cands: torch.Tensor, message: str
) -> None:
    # Prepare
    acc = RankingAccumulator()
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        acc.add(ranks, cands)
    assert acc.count == 0


def test_merge_rejects_different_cutoffs() -> None:
    # Prepare
    acc, other = RankingAccumulator(), RankingAccumulator(ks=(1, 5))
    # Execute / Assert
    with pytest.raises(ValueError, match="ks"):
        acc.merge(other)


def test_custom_cutoffs_result_keys() -> None:
    # Prepare
    acc = RankingAccumulator(ks=(1,))
    # Execute
    acc.add(torch.tensor([0, 1]), torch.tensor([3, 3]))
    result = acc.result()
    # Assert
    assert result == {"hr@1": 0.5, "ndcg@1": 0.5, "mrr": 0.75, "auc": 0.75, "count": 2.0}


# ---------------------------------------------------------------------- long_horizon_hits


def test_long_horizon_hits_hand_computed() -> None:
    # Prepare: top-2 of BASE_ROW is {4, 2}; padding column never enters the list
    scores = torch.tensor([BASE_ROW] * 4)
    futures = [np.array([3, 2]), np.array([1, 5]), np.array([], dtype=np.int64), np.array([0])]
    # Execute
    hits = long_horizon_hits(scores, futures, k=2)
    # Assert
    assert hits.dtype == torch.bool
    assert hits.tolist() == [True, False, False, False]


def test_long_horizon_hits_with_exclusion() -> None:
    # Prepare: excluding item 4 moves item 3 into the top-2 {2, 3}
    scores = torch.tensor([BASE_ROW] * 2)
    futures = [np.array([3]), np.array([4])]
    exclude = [np.array([4]), np.array([4])]
    # Execute
    hits = long_horizon_hits(scores, futures, k=2, exclude=exclude)
    # Assert: an excluded future item can never hit
    assert hits.tolist() == [True, False]


def test_long_horizon_ties_broken_by_lowest_item_index() -> None:
    # Prepare: constant scores, so the top-2 list is {1, 2}
    scores = torch.full((3, 6), 0.5)
    futures = [np.array([2]), np.array([3]), np.array([1])]
    exclude = [np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([1])]
    # Execute
    hits = long_horizon_hits(scores, futures, k=2, exclude=exclude)
    # Assert: row 2 excludes item 1, so its list is {2, 3}
    assert hits.tolist() == [True, False, False]


def test_long_horizon_fewer_candidates_than_k() -> None:
    # Prepare: only item 3 remains a candidate; k exceeds n_items
    scores = torch.tensor([[0.0, 0.3, 0.2, -math.inf]] * 2)
    futures = [np.array([3]), np.array([1])]
    exclude = [np.array([1, 2]), np.array([1, 2])]
    # Execute
    hits = long_horizon_hits(scores, futures, k=5, exclude=exclude)
    # Assert
    assert hits.tolist() == [True, False]


def test_long_horizon_matches_stable_sort_reference() -> None:
    # Prepare: integer scores with many ties at the k-th position
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    n_items, batch, k = 30, 64, 5
    scores = torch.randint(0, 4, (batch, n_items + 1), generator=gen).double()
    exclude = [rng.integers(0, n_items + 1, size=rng.integers(0, 10)) for _ in range(batch)]
    futures = [rng.integers(1, n_items + 1, size=3) for _ in range(batch)]
    # Execute
    hits = long_horizon_hits(scores, futures, k=k, exclude=exclude)
    # Assert
    expected = []
    for b in range(batch):
        cands = [j for j in range(1, n_items + 1) if j not in set(exclude[b].tolist())]
        top = sorted(cands, key=lambda j: (-float(scores[b, j]), j))[:k]
        expected.append(bool(set(top) & set(futures[b].tolist())))
    assert hits.tolist() == expected
    assert 0 < sum(expected) < batch


@pytest.mark.parametrize("k", [0, -1, True])
def test_long_horizon_rejects_bad_k(k: int) -> None:
    # Prepare
    scores = _row(BASE_ROW)
    # Execute / Assert
    with pytest.raises(ValueError, match="k must be"):
        long_horizon_hits(scores, [np.array([1])], k=k)
