"""One calibration for every mechanism: delta for a population, noise for a target."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.federation.config import FederatedConfig
from common.privacy.accounting import Release, pld_epsilon
from common.privacy.calibration import (
    DeltaError,
    EpsilonTooLowError,
    calibrate_noise,
    default_delta,
    epsilon_floor,
    noise_for_target_epsilon,
    resolve_delta,
    short_number,
)
from common.privacy.ledger import PrivacyLedger
from server.user_level_privacy import UserLevelPrivacy


def test_default_delta_is_a_tenth_of_one_over_the_users() -> None:
    assert default_delta(943) == pytest.approx(1 / 9430)
    assert resolve_delta(0.0, 943) == default_delta(943)
    assert resolve_delta(1e-5, 943) == 1e-5
    assert [short_number(v) for v in (1e-3, 0.005, 1.5e-4)] == ["1e-3", "5e-3", "1.5e-4"]


@pytest.mark.parametrize("population", [0, -3, 2.5, True])
def test_a_population_must_be_a_positive_count(population: object) -> None:
    with pytest.raises(ValueError, match="population .* must be an integer >= 1"):
        default_delta(population)  # type: ignore[arg-type]


def test_delta_above_the_population_rule_is_refused_everywhere(tmp_path: Path) -> None:
    message = r"delta 1e-3 above 1 / \(10 x 943\)"
    with pytest.raises(DeltaError, match=message):
        resolve_delta(1e-3, 943)
    config = FederatedConfig(dp="user", partition_mode="cohort", noise_multiplier=1.0, delta=1e-3)
    with pytest.raises(DeltaError, match=message):
        UserLevelPrivacy.from_config(config, 943, tmp_path / "run")
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    with pytest.raises(DeltaError, match=message):
        ledger.record_release("n", Release(1.0, 0.1, 1), delta=1e-3, population=943, run_id="r",
                              round=1, unit="user", mechanism="dp-sgd", clip_norm=1.0)  # fmt: skip
    assert not ledger.path.exists()


def test_noise_is_given_or_fits_every_planned_step_in_the_target() -> None:
    assert calibrate_noise(1.3, 0.0, delta=1e-5, sampling_rate=0.1, planned_steps=10,
                           mode="user") == 1.3  # fmt: skip
    noise = calibrate_noise(0.0, 2.0, delta=1e-5, sampling_rate=0.1, planned_steps=10, mode="user")
    assert 0.99 * 2.0 <= pld_epsilon([Release(noise, 0.1, 10)], 1e-5) <= 2.0
    with pytest.raises(ValueError, match="dp = 'local' needs noise-multiplier > 0 or target"):
        calibrate_noise(0.0, 0.0, delta=1e-5, sampling_rate=0.1, planned_steps=10, mode="local")


@pytest.mark.parametrize(("rate", "steps"), [(1.0, 1), (0.1, 100), (0.01, 5000)])
def test_the_pld_floor_is_met_and_a_target_below_it_is_refused_naming_the_key(
    rate: float, steps: int
) -> None:
    floor = epsilon_floor(1e-5, rate, steps)
    target = max(floor, 0.01)

    noise = noise_for_target_epsilon(target, 1e-5, rate, steps)

    # PLD's floor is its discretisation's residue: far below RDP's 0.103 at delta 1e-5
    assert 0.0 <= floor < 0.001
    assert pld_epsilon([Release(noise, rate, steps)], 1e-5) <= target
    if floor > 0:
        with pytest.raises(EpsilonTooLowError) as caught:
            noise_for_target_epsilon(floor * 0.99, 1e-5, rate, steps)
        assert caught.value.floor == floor
        assert str(caught.value) == (
            f"target-epsilon {floor * 0.99:g} is too low: at delta 1e-5 the PLD accountant "
            f"certifies no epsilon below {floor:g}, however large the noise; set "
            f"target-epsilon >= {floor:g}"
        )
