"""Calibration shared by every DP mechanism: delta for a population, noise for a target.

Both parties that release something (the server's DP-FedAvg, a node's DP-SGD) take their
delta and noise multiplier from here, so the rules cannot drift apart:

- delta never exceeds ``1 / (10 n)`` for ``n`` users protected (the federation's user
  count, public): at ``1 / n`` one user's whole history may leak with probability delta;
- the noise multiplier is either given or the smallest one (to a relative
  :data:`NOISE_TOLERANCE`) whose PLD epsilon (:data:`~common.privacy.accounting.ACCOUNTANT`,
  the accountant budgets and the ledger use too) over every planned release stays within
  the target epsilon.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from common.privacy.accounting import (
    ACCOUNTANT,
    PldComposer,
    Release,
    composed_epsilon,
    number_or_nan,
)

DELTA_FACTOR = 10  # delta <= 1 / (DELTA_FACTOR x users protected)
NOISE_TOLERANCE = 1e-3  # relative: calibrated noise is at most this much above the smallest
# Calibration aims this far (relative) below the target: the ledger composes a run's
# releases one round at a time while calibration composes them as one release; the two
# PLD orders differ by up to ~2e-8 (measured), so the last planned round still fits.
EPSILON_MARGIN = 1e-6
MAX_SIGMA = 1e6  # the largest noise multiplier searched (Opacus's MAX_SIGMA)


class DeltaError(ValueError):
    """A delta larger than the population allows: the guarantee would be vacuous."""


def default_delta(n_users: int) -> float:
    """delta = 1 / (10 n): well below 1 / n, the level at which one user may leak."""
    check_population(n_users)
    return 1.0 / (DELTA_FACTOR * n_users)


def check_population(n_users: object) -> int:
    """The number of users protected: a positive integer, else a ValueError naming it."""
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1:
        raise ValueError(f"population (users protected) must be an integer >= 1, got {n_users!r}")
    return n_users


def short_number(value: float) -> str:
    """``1e-3`` rather than ``0.001`` or ``1e-03``: how deltas read in messages."""
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def delta_problem(delta: float, n_users: int) -> str:
    """Why ``delta`` is too large for ``n_users`` ("" when it is fine)."""
    if not 0.0 < number_or_nan(delta) < 1.0:
        return f"delta must be in (0, 1), got {delta!r}"
    if delta > default_delta(n_users) * (1 + 1e-12):
        return f"delta {short_number(delta)} above 1 / ({DELTA_FACTOR} x {n_users})"
    return ""


def check_delta(delta: float, n_users: int) -> float:
    """``delta`` itself, or a :class:`DeltaError` when it exceeds ``1 / (10 n)``."""
    problem = delta_problem(delta, n_users)
    if problem:
        raise DeltaError(f"{problem}: the users protected need delta <= 1 / (10 x users)")
    return delta


def resolve_delta(configured: float | None, n_users: int) -> float:
    """The configured delta (0 or None: the default ``1 / (10 n)``), checked."""
    return check_delta(configured or default_delta(n_users), n_users)


class EpsilonTooLowError(ValueError):
    """A target epsilon below what the accountant certifies however large the noise.

    ``floor`` is that smallest epsilon, rounded up (3 significant digits): a target at or
    above it can be met.
    """

    def __init__(self, message: str, floor: float) -> None:
        super().__init__(message)
        self.floor = floor


def epsilon_floor(delta: float, sampling_rate: float = 1.0, steps: int = 1) -> float:
    """The smallest epsilon the PLD accountant certifies at ``delta``, rounded up.

    The epsilon at ``MAX_SIGMA / 2``, the largest noise the search tries, so every target
    at or above this is met. With PLD it is the discretisation's residue (0 to ~1e-3),
    where RDP's floor was ~0.1.
    """
    return _epsilon_floor(delta, sampling_rate, steps)


@functools.lru_cache(maxsize=256)
def _epsilon_floor(delta: float, sampling_rate: float, steps: int) -> float:
    epsilon = composed_epsilon([Release(MAX_SIGMA / 2, sampling_rate, steps)], delta)
    return round_up(epsilon) if epsilon > 0 else 0.0


def round_up(value: float) -> float:
    """``value`` > 0 rounded up to 3 significant digits: a bound safe to quote in a message."""
    digits = 2 - math.floor(math.log10(value))
    return math.ceil(value * 10**digits) / 10**digits


def check_reachable(
    target_epsilon: float,
    delta: float,
    sampling_rate: float = 1.0,
    steps: int = 1,
    name: str = "target-epsilon",
) -> None:
    """An :class:`EpsilonTooLowError` naming ``name`` when the target is below the floor."""
    floor = epsilon_floor(delta, sampling_rate, steps)
    if target_epsilon < floor:
        raise EpsilonTooLowError(
            f"{name} {target_epsilon:g} is too low: at delta {short_number(delta)} the "
            f"{ACCOUNTANT.upper()} "
            f"accountant certifies no epsilon below {floor:g}, however large the noise; "
            f"set {name} >= {floor:g}",
            floor,
        )


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    name: str = "target-epsilon",
) -> float:
    """Smallest noise multiplier (within :data:`NOISE_TOLERANCE`) whose PLD epsilon over
    ``steps`` releases at ``sampling_rate`` is <= target.

    ``name`` is the setting an unreachable target is reported as. Cached: a run
    calibrates once, but its nodes and tests ask again with the same arguments.
    """
    if not math.isfinite(number_or_nan(target_epsilon)) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be a positive number, got {target_epsilon}")
    if not 0.0 < number_or_nan(delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    Release(1.0, sampling_rate, steps)  # validates sampling_rate and steps
    check_reachable(target_epsilon, delta, sampling_rate, steps, name)
    return _calibrated(float(target_epsilon), float(delta), float(sampling_rate), steps)


@functools.lru_cache(maxsize=256)
def _calibrated(target_epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    composer = PldComposer()  # a private one: the candidates are never needed again

    def epsilon(noise: float) -> float:
        return composer.epsilon(
            composer.extend(composer.empty(), Release(noise, sampling_rate, steps)), delta
        )

    return smallest_noise(epsilon, target_epsilon)


def smallest_noise(epsilon: Callable[[float], float], target_epsilon: float) -> float:
    """Bisection for the smallest noise whose ``epsilon(noise)`` is <= target.

    Doubles from 1 (up to ``MAX_SIGMA / 2``) until the target is met, then halves the
    bracket until it is within :data:`NOISE_TOLERANCE`; always returns a noise that met
    ``target_epsilon x (1 - EPSILON_MARGIN)``, never one that missed it. An
    :class:`EpsilonTooLowError` when not even ``MAX_SIGMA / 2`` meets it.
    """
    goal = target_epsilon * (1 - EPSILON_MARGIN)
    least = epsilon(MAX_SIGMA / 2)
    if least > goal:
        floor = round_up(least)
        raise EpsilonTooLowError(
            f"target-epsilon {target_epsilon:g} is too low: the {ACCOUNTANT.upper()} "
            f"accountant certifies no epsilon below {floor:g} for these releases, however "
            f"large the noise; set target-epsilon >= {floor:g}",
            floor,
        )
    low, high = 0.0, 1.0
    while epsilon(high) > goal:
        low, high = high, min(high * 2, MAX_SIGMA / 2)
    while high - low > NOISE_TOLERANCE * high:
        middle = (low + high) / 2
        if epsilon(middle) > goal:
            low = middle
        else:
            high = middle
    return high


def calibrate_noise(
    noise_multiplier: float,
    target_epsilon: float,
    *,
    delta: float,
    sampling_rate: float,
    planned_steps: int,
    mode: str,
) -> float:
    """The given noise multiplier, or the one that fits every planned step in the target.

    ``mode`` names the run-config ``dp`` value in the error when neither is set.
    """
    if noise_multiplier > 0:
        return noise_multiplier
    if target_epsilon <= 0:
        raise ValueError(f"dp = {mode!r} needs noise-multiplier > 0 or target-epsilon > 0")
    return noise_for_target_epsilon(target_epsilon, delta, sampling_rate, planned_steps)


def noise_after_prior(
    prior: Sequence[Release],
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
) -> float:
    """Smallest noise multiplier (within :data:`NOISE_TOLERANCE`) for ``steps`` more
    releases at ``sampling_rate`` whose composition with ``prior`` stays within
    ``target_epsilon``.

    A bisection over the same PLD accountant the ledger records with; a ValueError when
    ``prior`` alone already spends the target.
    """
    Release(1.0, sampling_rate, steps)  # validates sampling_rate and steps
    spent = composed_epsilon(list(prior), delta) if prior else 0.0
    if spent >= target_epsilon:
        raise ValueError(
            f"target-epsilon {target_epsilon:g}: the earlier releases already spend "
            f"epsilon {spent:.4g} of it, nothing is left for {steps} more"
        )
    return _after_prior(
        tuple(prior), float(target_epsilon), float(delta), float(sampling_rate), steps
    )


@functools.lru_cache(maxsize=64)
def _after_prior(
    prior: tuple[Release, ...],
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
) -> float:
    composer = PldComposer()
    start = composer.compose(prior)

    def epsilon(noise: float) -> float:
        return composer.epsilon(composer.extend(start, Release(noise, sampling_rate, steps)), delta)

    return smallest_noise(epsilon, target_epsilon)
