"""Run-config keys of the on-device scorer and its DP global statistics, and their checks.

``statistics = true`` makes a run release, before any training round, the global
statistics of :mod:`common.privacy.statistics` (item popularity and attribute-to-item
transitions, every user's contribution bounded), noised under user-level DP when
``dp = "user"`` and exact when ``dp = "none"``. Validation, test and devices then score
with :class:`common.evaluation.on_device.OnDeviceScorer`, whose weights are the
``scorer-*`` keys (chosen on validation data, the same for every user).

Budget: with ``dp = "user"`` the statistics and the training rounds share
``target-epsilon`` (the noise of both: :func:`common.privacy.budget_split.user_level_noise`);
``num-server-rounds = 0`` trains nothing: the whole budget goes to the statistics
(``statistics-share`` 1). A deployment (``deployment-nodes``) releases them the same way
from its nodes' logs (docs/deployment.md). This module only checks the keys.
"""

from __future__ import annotations

from typing import Any

from common.evaluation.on_device import ScorerSettings


def check_statistics(config: Any) -> None:
    """The statistics keys against the run's mode, before anything starts."""
    if config.transitions_per_user < 1:
        raise ValueError(f"transitions-per-user must be >= 1, got {config.transitions_per_user}")
    if not 0.0 < config.statistics_share <= 1.0:
        raise ValueError(f"statistics-share must be in (0, 1], got {config.statistics_share}")
    scorer_settings(config)  # the scorer-* keys
    if not config.statistics:
        return
    if not config.item_attributes:
        raise ValueError(
            "statistics = true needs item-attributes (the public catalogue the "
            "attribute transitions are counted over): 'builtin' or a file"
        )
    if config.dp == "local" or config.secure_aggregation:
        raise ValueError(
            "statistics = true releases user-level sums noised by the server: it needs "
            "dp = 'user' or 'none' and no secure-aggregation"
        )
    if config.dp == "user":
        _check_budget_split(config)


def _check_budget_split(config: Any) -> None:
    """A user-level DP run splits its target epsilon between statistics and training."""
    if config.target_epsilon <= 0 or config.noise_multiplier > 0:
        raise ValueError(
            "statistics = true with dp = 'user' needs target-epsilon > 0 and no fixed "
            "noise-multiplier: the statistics and the training rounds share that budget"
        )
    if config.num_server_rounds > 0 and config.statistics_share >= 1.0:
        raise ValueError(
            f"statistics-share 1 leaves no budget for {config.num_server_rounds} training "
            "rounds: lower statistics-share or set num-server-rounds = 0"
        )
    if config.num_server_rounds == 0 and config.statistics_share < 1.0:
        raise ValueError(
            "num-server-rounds = 0 trains nothing: the statistics take the whole budget, "
            "set statistics-share = 1"
        )


def scorer_settings(config: Any) -> ScorerSettings:
    """The on-device scorer's global weights from the ``scorer-*`` keys."""
    try:
        return ScorerSettings(
            window=config.scorer_window,
            decay=config.scorer_decay,
            transition_floor=config.scorer_transition_floor,
            similarity_weight=config.scorer_similarity_weight,
            popularity_weight=config.scorer_popularity_weight,
            model_weight=config.scorer_model_weight,
        )
    except ValueError as error:
        raise ValueError(f"scorer-{str(error).replace('_', '-')}") from None
