"""How much Gaussian noise a release carries, measured from values that are pure noise.

A release's pure-noise values (its noise witness, :mod:`common.privacy.mechanism`, and
cells no user can reach) are ``n`` independent N(0, sigma^2) draws, so
``sum x^2 / sigma^2`` follows a chi-square distribution with ``n`` degrees of freedom
(the mean is known to be 0). The one-sided upper confidence bound

    sigma_upper = sqrt(sum x^2 / chi2.ppf(alpha, n))

is below the true sigma with probability exactly ``alpha``. A release passes when
``sigma_upper`` reaches the standard deviation its ledger entry claims; it fails when
even the upper bound falls short: an honest release fails with probability ``alpha``
(:data:`FALSE_ALARM_RATE`, 1e-6 per release), a release with half the claimed noise
(a ledger whose noise was doubled) passes only with probability far below 1e-100 at
1,024 values. Anything a party adds to those values beyond the noise (a malicious
client's contribution to an unreachable cell, a non-zero mean) only raises the
measurement: the test can miss too little noise only by chance, never be pushed into a
false alarm by the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FALSE_ALARM_RATE = 1e-6  # per release: the chance that an honest release fails


@dataclass(frozen=True)
class NoiseMeasurement:
    """The noise measured in ``count`` pure-noise values against the claimed std."""

    claimed_std: float
    measured_std: float  # root mean square of the values
    upper_std: float  # one-sided (1 - alpha) upper confidence bound of the true std
    count: int
    alpha: float

    @property
    def passed(self) -> bool:
        """Whether the values may carry the claimed noise (the upper bound reaches it)."""
        return self.upper_std >= self.claimed_std

    def describe(self) -> str:
        """One clause: claimed, measured, the interval and its confidence."""
        return (
            f"the ledger claims noise std {self.claimed_std:.4g}, {self.count:,} pure-noise "
            f"values measure {self.measured_std:.4g} (true std at most {self.upper_std:.4g} "
            f"with confidence 1 - {self.alpha:.0e}, one-sided chi-square)"
        )


def measure_noise(
    values: npt.ArrayLike, claimed_std: float, alpha: float = FALSE_ALARM_RATE
) -> NoiseMeasurement:
    """Measure the noise std of pure-noise ``values`` against ``claimed_std``.

    Non-finite values, or none at all, are a ValueError: nothing can be measured.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not math.isfinite(claimed_std) or claimed_std < 0:
        raise ValueError(f"claimed noise std must be finite and >= 0, got {claimed_std}")
    samples = np.asarray(values, dtype=np.float64).ravel()
    if not len(samples) or not np.isfinite(samples).all():
        raise ValueError(f"{len(samples)} pure-noise values, not all finite: nothing to measure")
    from scipy.stats import chi2  # here, not at import: 0.8 s every ServerApp start would pay

    squares = float(np.square(samples).sum())
    lower_quantile = float(chi2.ppf(alpha, len(samples)))
    return NoiseMeasurement(
        claimed_std=float(claimed_std),
        measured_std=math.sqrt(squares / len(samples)),
        upper_std=math.sqrt(squares / lower_quantile),
        count=len(samples),
        alpha=alpha,
    )
