"""Calibration shared by every DP mechanism: delta for a population, noise for a target.

Both parties that release something (the server's DP-FedAvg, a node's DP-SGD) take their
delta and noise multiplier from here, so the rules cannot drift apart:

- delta never exceeds ``1 / (10 n)`` for ``n`` users protected (the federation's user
  count, public): at ``1 / n`` one user's whole history may leak with probability delta;
- the noise multiplier is either given or the smallest one whose RDP epsilon over every
  planned release stays within the target epsilon.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from common.privacy.accounting import Release, number_or_nan, rdp_epsilon

DELTA_FACTOR = 10  # delta <= 1 / (DELTA_FACTOR x users protected)


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
    """The smallest epsilon the RDP accountant certifies at ``delta``, rounded up.

    The epsilon at half Opacus's ``MAX_SIGMA``: its search doubles the noise up to one
    value in (MAX_SIGMA / 2, MAX_SIGMA], so every target at or above this is met. It
    hardly depends on the sampling rate and steps (the noise makes their part vanish).
    """
    from opacus.accountants.utils import MAX_SIGMA

    return round_up(rdp_epsilon([Release(MAX_SIGMA / 2, sampling_rate, steps)], delta))


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
            f"{name} {target_epsilon:g} is too low: at delta {short_number(delta)} the RDP "
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
    """Smallest noise multiplier (within 1% of epsilon) whose RDP epsilon is <= target.

    ``name`` is the setting an unreachable target is reported as.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not math.isfinite(number_or_nan(target_epsilon)) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be a positive number, got {target_epsilon}")
    if not 0.0 < number_or_nan(delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    Release(1.0, sampling_rate, steps)  # validates sampling_rate and steps
    check_reachable(target_epsilon, delta, sampling_rate, steps, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sampling_rate,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=0.01 * target_epsilon,
            )
        )


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
    """Smallest noise multiplier (within 1% of epsilon) for ``steps`` more releases at
    ``sampling_rate`` whose composition with ``prior`` stays within ``target_epsilon``.

    A bisection over the same RDP accountant the ledger records with; a ValueError when
    ``prior`` alone already spends the target.
    """
    Release(1.0, sampling_rate, steps)  # validates sampling_rate and steps
    spent = rdp_epsilon(list(prior), delta) if prior else 0.0
    if spent >= target_epsilon:
        raise ValueError(
            f"target-epsilon {target_epsilon:g}: the earlier releases already spend "
            f"epsilon {spent:.4g} of it, nothing is left for {steps} more"
        )

    def epsilon(noise: float) -> float:
        return rdp_epsilon([*prior, Release(noise, sampling_rate, steps)], delta)

    low, high = 0.0, 1.0
    while epsilon(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ValueError(f"target-epsilon {target_epsilon:g}: no noise multiplier fits it")
    while epsilon(high) < target_epsilon * 0.99 and high - low > 1e-4 * high:
        middle = (low + high) / 2
        if epsilon(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
