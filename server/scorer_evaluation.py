"""A deployment's evaluation with the on-device scorer: the release travels to the nodes.

A deployment that released DP global statistics (``statistics = true``) is judged as its
users' devices rank: each node scores its own users with the on-device scorer over the
released statistics, its public item attributes and, weighted by ``scorer-model-weight``,
the model. The server reads the release back from the run folder (``statistics.npz``,
written after its ledger entry) and attaches it to every evaluation message
(:mod:`common.federation.scorer_messages`): the per-round federated validation
(``fraction-evaluate``) through :class:`ScorerEvaluation`, the released model's final
figures through :func:`server.federated_evaluation.deployment_figures`. The statistics
are public once released, so sending them costs no privacy; the metric sums the nodes
send back are the same kind of release as a deployment's model metrics (``summary.json``
``released_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.config import FederatedConfig
from common.federation.scorer_messages import ScorerRelease
from common.federation.statistics_config import scorer_settings
from common.privacy.statistics import STATISTICS_FILE, DPStatistics
from server.strategy_wrapper import StrategyWrapper


def released_scorer(config: FederatedConfig, results_dir: Path) -> ScorerRelease:
    """The run's released statistics (its ``statistics.npz``) and scorer settings."""
    stats = DPStatistics.load(results_dir / STATISTICS_FILE)
    return ScorerRelease.of(stats, scorer_settings(config))


class ScorerEvaluation(StrategyWrapper):
    """Every evaluation message of the wrapped strategy carries the released scorer."""

    def __init__(self, strategy: Strategy, release: ScorerRelease) -> None:
        super().__init__(strategy)
        self.release = release

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages, each with the statistics and settings attached."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        for message in messages:
            self.release.attach(message.content)
        return messages
