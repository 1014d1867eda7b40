"""DP global statistics: bounded user contributions, calibrated noise, composed accounting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.privacy.accounting import Release, pld_epsilon, rdp_epsilon
from common.privacy.calibration import noise_for_target_epsilon
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import (
    STATISTICS,
    DPStatistics,
    exact_statistics,
    joint_noise_multiplier,
    noise_multipliers,
    noisy_release,
    popularity_contribution,
    release_statistics,
    transition_contribution,
)

N_ITEMS = 12
N_ATTRIBUTES = 5
# item 0 is padding; items share attributes so one transition touches several cells
ATTRIBUTES = [np.zeros(0, dtype=np.int64)] + [
    np.unique(np.array([i % N_ATTRIBUTES, (i * 3) % N_ATTRIBUTES, 4], dtype=np.int64))
    for i in range(1, N_ITEMS + 1)
]
histories = st.lists(st.integers(1, N_ITEMS), min_size=0, max_size=40).map(
    lambda items: np.asarray(items, dtype=np.int64)
)


@settings(max_examples=200, deadline=None)
@given(history=histories, transitions=st.integers(1, 6))
def test_one_users_contribution_has_norm_at_most_one(history: np.ndarray, transitions: int) -> None:
    _, popularity = popularity_contribution(history)
    _, cells = transition_contribution(history, ATTRIBUTES, N_ITEMS, transitions)

    assert float(np.linalg.norm(popularity)) <= 1.0 + 1e-9
    assert float(np.linalg.norm(cells)) <= 1.0 + 1e-9


@settings(max_examples=100, deadline=None)
@given(others=st.lists(histories, min_size=0, max_size=6), user=histories)
def test_adding_one_user_moves_each_statistic_by_at_most_the_bound(
    others: list[np.ndarray], user: np.ndarray
) -> None:
    without = exact_statistics(others, ATTRIBUTES, N_ATTRIBUTES, 2)
    with_user = exact_statistics([*others, user], ATTRIBUTES, N_ATTRIBUTES, 2)

    for before, after in zip(without, with_user, strict=True):
        assert float(np.linalg.norm(after - before)) <= 1.0 + 1e-9


def test_contributions_count_distinct_items_and_only_the_last_transitions() -> None:
    items, values = popularity_contribution(np.array([3, 5, 3, 0]))
    assert items.tolist() == [3, 5]
    assert values.tolist() == pytest.approx([1 / math.sqrt(2)] * 2)

    attributes = [np.zeros(0, dtype=np.int64), np.array([0]), np.array([1]), np.array([0, 1])]
    cells, values = transition_contribution(np.array([1, 2, 3]), attributes, 3, 1)
    assert cells.tolist() == [1 * 4 + 3]  # only 2 -> 3: attribute 1 of item 2 to item 3
    assert values.tolist() == [1.0]
    cells, values = transition_contribution(np.array([3, 1]), attributes, 3, 1)
    assert cells.tolist() == [0 * 4 + 1, 1 * 4 + 1]  # item 3 has attributes 0 and 1
    assert values.tolist() == pytest.approx([1 / math.sqrt(2)] * 2)


def test_budget_shares_compose_to_the_target_epsilon() -> None:
    delta = 1e-5
    for epsilon in (1.0, 8.0):
        multipliers = noise_multipliers(
            epsilon, delta, {"popularity": 0.2, "attribute_transitions": 0.8}
        )
        single = noise_for_target_epsilon(epsilon, delta, 1.0, 1)

        assert multipliers["popularity"] == pytest.approx(single / math.sqrt(0.2))
        # together the statistics are one Gaussian mechanism of noise `single` (RDP adds
        # up to exactly it); the ledger records that joint release, calibrated by PLD
        separate = rdp_epsilon([Release(z, 1.0, 1) for z in multipliers.values()], delta)
        assert separate == pytest.approx(rdp_epsilon([Release(single, 1.0, 1)], delta), rel=1e-6)
        joint = joint_noise_multiplier(multipliers)
        assert joint == pytest.approx(single, rel=1e-12)
        composed = pld_epsilon([Release(joint, 1.0, 1)], delta)
        assert 0.99 * epsilon <= composed <= epsilon


def test_no_dp_releases_exact_sums_and_says_epsilon_is_infinite() -> None:
    stats = release_statistics([np.array([1, 2, 3])], ATTRIBUTES, N_ATTRIBUTES, None, 1e-5)
    popularity, transitions = exact_statistics([np.array([1, 2, 3])], ATTRIBUTES, N_ATTRIBUTES)

    assert np.array_equal(stats.popularity, popularity.astype(np.float32))
    assert np.array_equal(stats.attribute_transitions, transitions.astype(np.float32))
    assert stats.epsilon(1e-5) == math.inf


def test_bad_shares_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        noise_multipliers(8.0, 1e-5, {"popularity": 0.5, "attribute_transitions": 0.6})
    with pytest.raises(ValueError, match="positive share"):
        noise_multipliers(8.0, 1e-5, {"popularity": 1.0})


def test_noise_has_the_calibrated_scale_and_the_release_its_epsilon() -> None:
    delta = 1e-5
    multipliers = noise_multipliers(2.0, delta)
    zeros = np.zeros(N_ATTRIBUTES * 40_000).reshape(N_ATTRIBUTES, 40_000)
    randomness = PrivacyRandomness(insecure_seed=[7])

    stats = noisy_release(np.zeros(50_000), zeros, multipliers, randomness)

    for name in STATISTICS:
        noise = getattr(stats, name).astype(np.float64)
        assert float(noise.std()) == pytest.approx(multipliers[name], rel=0.02)
        assert abs(float(noise.mean())) < 0.02 * multipliers[name]
    assert stats.epsilon(delta) == pytest.approx(2.0, rel=0.02)
    assert stats.epsilon(delta) <= 2.0 * (1 + 1e-6)


def test_release_noise_is_secret_unless_an_insecure_seed_is_given() -> None:
    history = [np.array([1, 2, 3, 4])]
    secret = [release_statistics(history, ATTRIBUTES, N_ATTRIBUTES, 8.0, 1e-5) for _ in range(2)]
    replay = [
        release_statistics(
            history, ATTRIBUTES, N_ATTRIBUTES, 8.0, 1e-5, randomness=PrivacyRandomness([3])
        )
        for _ in range(2)
    ]

    assert not np.array_equal(secret[0].popularity, secret[1].popularity)
    assert np.array_equal(replay[0].attribute_transitions, replay[1].attribute_transitions)


def test_a_saved_release_loads_back_unchanged_and_a_wrong_file_is_named(tmp_path: Path) -> None:
    stats = release_statistics([np.array([1, 2, 3])], ATTRIBUTES, N_ATTRIBUTES, 4.0, 1e-5)
    stats.save(tmp_path / "release.npz")
    (tmp_path / "junk.npz").write_text("not numpy")

    loaded = DPStatistics.load(tmp_path / "release.npz")

    assert np.array_equal(loaded.attribute_transitions, stats.attribute_transitions)
    assert np.array_equal(loaded.popularity, stats.popularity)
    assert loaded.noise_multipliers == pytest.approx(stats.noise_multipliers)
    with pytest.raises(ValueError, match="junk.npz: not a DP statistics release"):
        DPStatistics.load(tmp_path / "junk.npz")
