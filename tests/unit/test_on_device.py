"""On-device scorer: hand-computed scores, history exclusion, batch equals one device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.evaluation.on_device import (
    OnDeviceScorer,
    ScorerSettings,
    item_attribute_lists,
)
from common.evaluation.ranking import target_ranks
from common.privacy.statistics import DPStatistics

# items 1..4; attributes: 1 {0}, 2 {0, 1}, 3 {1}, 4 {2}
ATTRIBUTES = [
    np.array([], dtype=np.int64),
    np.array([0]),
    np.array([0, 1]),
    np.array([1]),
    np.array([2]),
]
POPULARITY = np.array([0.0, 1.0, 1.0, 1.0, 3.0])
TRANSITIONS = np.array(
    [
        [0.0, 0.0, 0.0, 2.0, -0.5],  # attribute 0 -> item 3 (noise below 0 is clamped)
        [0.0, 0.0, 0.0, 0.0, 1.0],  # attribute 1 -> item 4
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
HAND = ScorerSettings(
    window=1, decay=1.0, transition_floor=1.0, similarity_weight=1.0, popularity_weight=0.5
)


def _scorer(settings: ScorerSettings = HAND) -> OnDeviceScorer:
    stats = DPStatistics(POPULARITY.astype(np.float32), TRANSITIONS.astype(np.float32), {})
    return OnDeviceScorer.from_release(stats, ATTRIBUTES, settings)


def test_scores_match_the_hand_computed_formula() -> None:
    idf_shared = math.log(5 / 3)  # attributes 0 and 1 are held by two of the five rows
    half_pop = 0.5 * math.log(2.0)

    scores = _scorer().batch_scores([np.array([1])])[0]

    expected = [
        -math.inf,
        idf_shared + half_pop,  # item 1 shares attribute 0 with item 1 (one attribute of one)
        idf_shared / 2 + half_pop,  # item 2: one of its two attributes
        math.log(2.0) + half_pop,  # item 3: the whole transition row of attribute 0
        0.5 * math.log(4.0),  # item 4: popularity only
    ]
    assert scores.tolist() == pytest.approx(expected, rel=1e-5)


def test_device_scores_exclude_history_and_rank_as_computed_by_hand() -> None:
    scorer = _scorer()

    row = scorer.scores([1])

    assert row[0] == -math.inf and row[1] == -math.inf
    assert scorer.top_k([1], 10).tolist() == [3, 4, 2]
    assert scorer.top_k([], 2).tolist() == [4, 1]  # no history: popularity, ties by lower id


def test_recent_items_are_weighted_by_decay() -> None:
    scorer = _scorer(
        ScorerSettings(
            window=2, decay=0.5, transition_floor=1.0, similarity_weight=0.0, popularity_weight=0.0
        )
    )

    scores = scorer.batch_scores([np.array([4, 3, 1])])[0]  # window: items 3 (weight 0.5), 1 (1)

    profile = np.array([1.0, 0.5, 0.0]) / 1.5  # attributes of item 1, then item 3 at half weight
    rows = np.clip(TRANSITIONS, 0, None) / np.clip(TRANSITIONS, 0, None).sum(
        axis=1, keepdims=True
    ).clip(1e-12)
    expected = np.log(1.0 + profile @ rows)[1:]
    assert scores[1:].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_a_batch_scores_every_user_as_their_own_device_would() -> None:
    scorer = _scorer(ScorerSettings())
    histories = [np.array([1, 2]), np.array([4]), np.array([3, 3, 2, 1])]

    batch = scorer.batch_scores(histories)

    for row, history in zip(batch, histories, strict=True):
        alone = scorer.scores(history)
        keep = np.isfinite(alone)
        assert np.allclose(row.numpy()[keep], alone[keep])


def test_evaluation_ranking_with_history_exclusion_matches_the_device_list() -> None:
    scorer = _scorer()
    scores = scorer.batch_scores([np.array([1])]).double()

    ranks = [int(target_ranks(scores, torch.tensor([t]), [np.array([1])])[0]) for t in (3, 4, 2)]

    assert ranks == [0, 1, 2]


def test_model_scores_are_added_with_their_weight() -> None:
    with_model = _scorer(ScorerSettings(model_weight=2.0))
    without = _scorer(ScorerSettings(model_weight=0.0))
    model = torch.arange(5, dtype=torch.float32).unsqueeze(0)

    difference = with_model.batch_scores([np.array([2])], model) - without.batch_scores(
        [np.array([2])]
    )

    assert difference[0, 1:].tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0])
    with pytest.raises(ValueError, match="model_scores must have shape"):
        with_model.batch_scores([np.array([2])], torch.zeros(1, 3))


def test_attribute_lists_follow_the_item_index_and_renumber_attributes() -> None:
    lists, n_attributes = item_attribute_lists({"10": [7, 3], "20": [3], "99": [42]}, [10, 20, 30])

    assert n_attributes == 3  # 3, 7, 42 become 0, 1, 2
    assert [a.tolist() for a in lists] == [[], [0, 1], [0], []]


def test_bad_settings_and_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        ScorerSettings(window=0)
    with pytest.raises(ValueError, match="decay must be in"):
        ScorerSettings(decay=0.0)
    with pytest.raises(ValueError, match="popularity must have shape"):
        OnDeviceScorer(ATTRIBUTES, 3, np.zeros(3), TRANSITIONS, HAND)
    with pytest.raises(ValueError, match="history items must be ids in 0..4"):
        _scorer().scores([5])
