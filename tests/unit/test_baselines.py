"""Tests for common.evaluation.baselines: popularity and first-order Markov chain baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.evaluation.baselines import MarkovChain, PopularityBaseline, popularity_scores

N_ITEMS = 5


def _sequences() -> list[np.ndarray]:
    """Cleaned: [1,2,3], [1,2,4], [2,3], [3,1] (leading padding dropped)."""
    return [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3]), np.array([0, 0, 3, 1])]


def _tie_sequences() -> list[np.ndarray]:
    """From item 1, items 2 and 3 follow once each; item 3 is more popular (3 vs 1)."""
    return [np.array([1, 2]), np.array([1, 3]), np.array([3, 4]), np.array([5, 3])]


# ------------------------------------------------------------------------ popularity


def test_popularity_scores_counts_and_padding() -> None:
    # Prepare
    sequences = _sequences()
    # Execute
    scores = popularity_scores(sequences, N_ITEMS)
    # Assert
    assert scores.dtype == np.float64
    assert scores.shape == (N_ITEMS + 1,)
    assert scores[0] == -math.inf
    assert scores[1:].tolist() == [3.0, 3.0, 3.0, 1.0, 0.0]


def test_popularity_scores_of_no_interactions() -> None:
    # Prepare
    sequences = [np.array([], dtype=np.int64), np.array([0, 0])]
    # Execute
    scores = popularity_scores(sequences, 3)
    # Assert
    assert scores.tolist() == [-math.inf, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("sequences", "n_items", "message"),
    [
        ([np.array([1, 6])], 5, "0..5"),
        ([np.array([-1, 2])], 5, "0..5"),
        ([np.array([1.0, 2.0])], 5, "integer"),
        ([np.array([1])], 0, "n_items"),
    ],
)
def test_popularity_scores_rejects_bad_arguments(
    sequences: list[np.ndarray], n_items: int, message: str
) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=message):
        popularity_scores(sequences, n_items)


def test_popularity_baseline_repeats_row_for_every_user() -> None:
    # Prepare
    model = PopularityBaseline().fit(_sequences(), N_ITEMS)
    # Execute
    scores = model.scores(np.array([1, 0, 4]))
    # Assert
    expected = torch.tensor([-math.inf, 3.0, 3.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    assert scores.dtype == torch.float64
    assert scores.shape == (3, N_ITEMS + 1)
    assert all(torch.equal(row, expected) for row in scores)


def test_popularity_baseline_scores_do_not_alias_fitted_state() -> None:
    # Prepare
    model = PopularityBaseline().fit(_sequences(), N_ITEMS)
    # Execute
    model.scores(np.array([1]))[0, 1] = 99.0
    # Assert
    assert model.scores(np.array([1]))[0, 1].item() == 3.0


def test_popularity_baseline_requires_fit() -> None:
    # Prepare
    model = PopularityBaseline()
    # Execute / Assert
    with pytest.raises(RuntimeError, match="fit"):
        model.scores(np.array([1]))


# ---------------------------------------------------------------------- Markov chain


def test_markov_chain_transition_counts() -> None:
    # Prepare
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute
    counts = {item: model.transition_counts(item).tolist() for item in range(N_ITEMS + 1)}
    # Assert: no transition out of padding, none across sequence boundaries
    assert counts[0] == [0, 0, 0, 0, 0, 0]
    assert counts[1] == [0, 0, 2, 0, 0, 0]
    assert counts[2] == [0, 0, 0, 2, 1, 0]
    assert counts[3] == [0, 1, 0, 0, 0, 0]
    assert counts[4] == [0, 0, 0, 0, 0, 0]
    assert counts[5] == [0, 0, 0, 0, 0, 0]


def test_markov_chain_scores_exact_values() -> None:
    # Prepare: popularity [3, 3, 3, 1, 0] -> tie-break pop / (3 + 1)
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute
    scores = model.scores(np.array([2, 1, 3]))
    # Assert
    assert scores.dtype == torch.float64
    assert scores.shape == (3, N_ITEMS + 1)
    assert scores[0].tolist() == [-math.inf, 0.75, 0.75, 2.75, 1.25, 0.0]
    assert scores[1].tolist() == [-math.inf, 0.75, 2.75, 0.75, 0.25, 0.0]
    assert scores[2].tolist() == [-math.inf, 1.75, 0.75, 0.75, 0.25, 0.0]


def test_markov_chain_ties_broken_by_popularity() -> None:
    # Prepare: popularity [2, 1, 3, 1, 1] -> tie-break pop / (3 + 1)
    model = MarkovChain().fit(_tie_sequences(), N_ITEMS)
    # Execute
    scores = model.scores(np.array([1]))[0]
    # Assert: equal counts 1->2, 1->3; the more popular item 3 wins, and popularity
    # alone (item 1, the most popular non-successor after 3) stays below one transition
    assert scores.tolist() == [-math.inf, 0.5, 1.25, 1.75, 0.25, 0.25]
    assert int(torch.argmax(scores)) == 3
    assert scores[1] < scores[2]


def test_markov_chain_empty_history_falls_back_to_popularity() -> None:
    # Prepare
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute
    empty = model.scores(np.array([0]))[0]
    no_successor = model.scores(np.array([5]))[0]
    # Assert: both are pop / (max_pop + 1), ordered like plain popularity
    assert empty.tolist() == [-math.inf, 0.75, 0.75, 0.75, 0.25, 0.0]
    assert torch.equal(empty, no_successor)


def test_markov_chain_padding_column_is_minus_inf() -> None:
    # Prepare
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute
    scores = model.scores(np.arange(N_ITEMS + 1))
    # Assert
    assert torch.all(scores[:, 0] == -math.inf)
    assert torch.all(torch.isfinite(scores[:, 1:]))


def test_markov_chain_without_training_data() -> None:
    # Prepare
    model = MarkovChain().fit([], 3)
    # Execute
    scores = model.scores(np.array([0, 2]))
    # Assert
    assert scores.tolist() == [[-math.inf, 0.0, 0.0, 0.0]] * 2


def test_markov_chain_empty_batch() -> None:
    # Prepare
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute
    scores = model.scores(np.array([], dtype=np.int64))
    # Assert
    assert scores.shape == (0, N_ITEMS + 1)


@pytest.mark.parametrize(
    ("last_items", "message"),
    [
        (np.array([[1, 2]]), "1-D"),
        (np.array([6]), "0..5"),
        (np.array([-1]), "0..5"),
        (np.array([1.0]), "integer"),
    ],
)
def test_markov_chain_rejects_bad_last_items(last_items: np.ndarray, message: str) -> None:
    # Prepare
    model = MarkovChain().fit(_sequences(), N_ITEMS)
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        model.scores(last_items)


def test_markov_chain_requires_fit() -> None:
    # Prepare
    model = MarkovChain()
    # Execute / Assert
    with pytest.raises(RuntimeError, match="fit"):
        model.scores(np.array([1]))
