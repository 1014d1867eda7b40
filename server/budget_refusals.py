"""Count the clients that refuse to train because their privacy budget is spent.

A client whose next round would exceed its budget answers with a Flower error reply
(:mod:`client.local_privacy`); the wrapped strategy skips error replies, so the run goes
on with the others. This wrapper counts those refusals per round for the run record and
stops the run once a whole round is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from common.privacy.budget import BUDGET_EXHAUSTED
from server.strategy_wrapper import StrategyWrapper
from server.user_level_privacy import PrivacyBudgetSpent

logger = logging.getLogger("fedseqrec.server")


class BudgetRefusals(StrategyWrapper):
    """Delegates to ``strategy``; reports ``(round, refusals)`` through ``report``."""

    def __init__(self, strategy: Strategy, report: Callable[[int, int], None]) -> None:
        super().__init__(strategy)
        self.report = report

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count refusals, stop when nobody trained, aggregate the rest."""
        replies = list(replies)
        refused = sum(1 for r in replies if r.has_error() and r.error.code == BUDGET_EXHAUSTED)
        self.report(server_round, refused)
        if replies and refused == len(replies):
            raise PrivacyBudgetSpent(
                f"round {server_round}: all {refused} sampled clients have spent their budget"
            )
        if refused:
            logger.info("round %d: %d clients refused (budget spent)", server_round, refused)
        return self.strategy.aggregate_train(server_round, replies)
