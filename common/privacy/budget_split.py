"""User-level DP's noise when one target epsilon covers the statistics and the rounds.

``dp = "user"`` releases, from the same users, the DP global statistics (with
``statistics = true``, :mod:`common.privacy.statistics`) and the training rounds'
DP-FedAvg aggregates. The statistics alone are calibrated to
``statistics-share x target-epsilon``; the rounds get the noise that keeps the
composition of both within ``target-epsilon`` (none when the run trains no round). The
server (:mod:`server.user_level_privacy`) and the launcher's preflight
(:mod:`common.federation.preflight`) call this same function.
"""

from __future__ import annotations

from typing import Any

from common.privacy.accounting import Release
from common.privacy.calibration import (
    EpsilonTooLowError,
    calibrate_noise,
    noise_after_prior,
    round_up,
    short_number,
)
from common.privacy.statistics import joint_noise_multiplier, noise_multipliers


def user_level_noise(config: Any, delta: float) -> tuple[float, dict[str, float]]:
    """``dp = "user"``: the training rounds' noise multiplier and each statistic's.

    Without statistics the rounds are calibrated alone (or ``noise-multiplier`` is used);
    with them the statistics spend ``statistics-share x target-epsilon`` and the rounds
    the rest of ``target-epsilon``.
    """
    if not config.statistics:
        noise = calibrate_noise(
            config.noise_multiplier,
            config.target_epsilon,
            delta=delta,
            sampling_rate=config.fraction_train,
            planned_steps=config.num_server_rounds,
            mode="user",
        )
        return noise, {}
    statistics = statistics_noise(config, delta)
    if config.num_server_rounds == 0:
        return 0.0, statistics
    prior = [Release(joint_noise_multiplier(statistics), 1.0, 1)]
    noise = noise_after_prior(
        prior, config.target_epsilon, delta, config.fraction_train, config.num_server_rounds
    )
    return noise, statistics


def statistics_noise(config: Any, delta: float) -> dict[str, float]:
    """Each statistic's noise multiplier for ``statistics-share x target-epsilon``.

    A share below what the accountant can certify is reported as the keys that set it.
    """
    share, target = config.statistics_share, config.target_epsilon
    try:
        return noise_multipliers(share * target, delta)
    except EpsilonTooLowError as error:
        raise ValueError(
            f"target-epsilon {target:g} is too low: its statistics-share {share:g} "
            f"({share * target:g}) is below {error.floor:g}, the smallest epsilon the PLD "
            f"accountant certifies at delta {short_number(delta)}; set target-epsilon >= "
            f"{round_up(error.floor / share):g}"
        ) from None
