"""Tests for common.privacy.accounting: RDP (Opacus) and PLD (dp_accounting) epsilons."""

from __future__ import annotations

import math

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from common.privacy.accounting import (
    PLD_DISCRETIZATION,
    Release,
    pld_epsilon,
    rdp_epsilon,
    rdp_state,
    releases_from_rdp_state,
)
from common.privacy.calibration import noise_for_target_epsilon

DELTA = 1e-5
MIXED = [Release(1.0, 0.1, 5), Release(2.0, 0.5, 3), Release(0.7, 1.0, 2)]

noises = st.floats(min_value=0.5, max_value=8.0)
rates = st.floats(min_value=0.001, max_value=1.0)
steps = st.integers(min_value=1, max_value=300)


def test_rdp_epsilon_is_opacus_rdp_accountant() -> None:
    # Prepare: the accountant steps one by one, as Opacus's optimizer does
    accountant = RDPAccountant()
    for release in MIXED:
        for _ in range(release.steps):
            accountant.step(
                noise_multiplier=release.noise_multiplier, sample_rate=release.sampling_rate
            )
    # Execute
    epsilon = rdp_epsilon(MIXED, DELTA)
    # Assert
    assert epsilon == pytest.approx(accountant.get_epsilon(delta=DELTA), rel=1e-12)
    assert epsilon == pytest.approx(11.3923, abs=1e-4)


def test_pld_epsilon_is_dp_accounting_pld_accountant() -> None:
    # Prepare
    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for release in MIXED:
        event = dp_event.PoissonSampledDpEvent(
            release.sampling_rate, dp_event.GaussianDpEvent(release.noise_multiplier)
        )
        accountant.compose(event, release.steps)
    # Execute
    epsilon = pld_epsilon(MIXED, DELTA)
    # Assert
    assert epsilon == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert epsilon < rdp_epsilon(MIXED, DELTA)


def test_no_noise_means_infinite_epsilon_and_no_release_means_zero() -> None:
    no_noise = [Release(1.0, 0.1, 3), Release(0.0, 0.5, 1)]
    assert rdp_epsilon(no_noise, DELTA) == math.inf
    assert pld_epsilon(no_noise, DELTA) == math.inf
    assert rdp_epsilon([], DELTA) == 0.0
    assert pld_epsilon([], DELTA) == 0.0


def test_rdp_state_round_trips_through_opacus_history() -> None:
    state = rdp_state(MIXED)
    assert state[0] == (1.0, 0.1, 5)
    assert releases_from_rdp_state(state) == MIXED


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-1.0, 0.1, 1), "'noise_multiplier' must be >= 0"),
        ((math.nan, 0.1, 1), "'noise_multiplier' must be >= 0"),
        ((1.0, 0.0, 1), "'sampling_rate' must be in (0, 1]"),
        ((1.0, 1.5, 1), "'sampling_rate' must be in (0, 1]"),
        ((1.0, 0.1, 0), "'steps' must be an integer >= 1"),
        ((1.0, 0.1, 2.0), "'steps' must be an integer >= 1"),
    ],
)
def test_release_rejects_bad_parameters(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Release(*arguments)


def test_bad_delta_and_target_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        rdp_epsilon(MIXED, 0.0)
    with pytest.raises(ValueError, match="target_epsilon must be a positive number"):
        noise_for_target_epsilon(-1.0, DELTA, 0.1, 10)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(noise=noises, rate=rates, first=steps, extra=steps)
def test_rdp_epsilon_grows_with_steps(noise: float, rate: float, first: int, extra: int) -> None:
    fewer = rdp_epsilon([Release(noise, rate, first)], DELTA)
    more = rdp_epsilon([Release(noise, rate, first + extra)], DELTA)
    assert more >= fewer


@settings(max_examples=25, deadline=None, derandomize=True)
@given(noise=noises, more_noise=st.floats(0.0, 5.0), rate=rates, count=steps)
def test_rdp_epsilon_falls_with_noise(
    noise: float, more_noise: float, rate: float, count: int
) -> None:
    noisy = rdp_epsilon([Release(noise + more_noise, rate, count)], DELTA)
    assert noisy <= rdp_epsilon([Release(noise, rate, count)], DELTA)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(noise=noises, rate=rates, first=steps, extra=steps)
def test_pld_epsilon_grows_with_steps(noise: float, rate: float, first: int, extra: int) -> None:
    fewer = pld_epsilon([Release(noise, rate, first)], DELTA)
    assert pld_epsilon([Release(noise, rate, first + extra)], DELTA) >= fewer


@pytest.mark.filterwarnings("ignore:Optimal order is the")
@settings(max_examples=20, deadline=None, derandomize=True)
@given(noise=noises, rate=rates, first=steps, second=steps)
def test_two_matching_releases_compose_like_one_with_summed_steps(
    noise: float, rate: float, first: int, second: int
) -> None:
    # Opacus composes the two history entries separately; we sum matching steps first.
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, first), (noise, rate, second)]
    split = accountant.get_epsilon(delta=DELTA)
    joined = rdp_epsilon([Release(noise, rate, first + second)], DELTA)
    assert joined == pytest.approx(split, rel=1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(noise=noises, rate=rates, first=steps, second=steps)
def test_pld_composition_matches_summed_steps(
    noise: float, rate: float, first: int, second: int
) -> None:
    split = pld_epsilon([Release(noise, rate, first), Release(noise, rate, second)], DELTA)
    joined = pld_epsilon([Release(noise, rate, first + second)], DELTA)
    assert split == pytest.approx(joined, rel=1e-2, abs=1e-3)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(releases=st.lists(st.builds(Release, noises, rates, steps), min_size=1, max_size=3))
def test_pld_is_never_looser_than_rdp(releases: list[Release]) -> None:
    assert pld_epsilon(releases, DELTA) <= rdp_epsilon(releases, DELTA)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    target=st.floats(min_value=0.5, max_value=10.0),
    rate=rates,
    count=st.integers(min_value=1, max_value=1000),
)
def test_noise_for_target_epsilon_lands_within_one_percent_below_target(
    target: float, rate: float, count: int
) -> None:
    noise = noise_for_target_epsilon(target, DELTA, rate, count)
    epsilon = pld_epsilon([Release(noise, rate, count)], DELTA)
    assert 0.99 * target <= epsilon <= target
