"""Evaluation in a deployment: the nodes score their own users and return metric sums.

A deployment's server holds no user data (:mod:`server.server_view`), so the released
model's validation and test figures come from the nodes: each sends exact metric sums
over its users' held-out items, which the server adds. Those sums are a release the
summary names (``released_metrics``); the DP guarantee covers the models only.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.federation.messages import (
    ARRAYS,
    CONFIG,
    STAGE,
    TEST_STAGE,
    VALID_STAGE,
    WEIGHT_KEY,
)
from common.federation.metrics import metrics_from_sums, sum_metric_records
from common.federation.scorer_messages import ScorerRelease

logger = logging.getLogger("fedseqrec.server")


def federated_metrics(
    grid: Grid,
    arrays: ArrayRecord,
    settings: dict[str, object],
    stage: str,
    scorer: ScorerRelease | None = None,
) -> dict[str, float]:
    """Metrics of ``arrays`` on every node's users at ``stage`` ('valid' or 'test').

    With ``scorer`` (a run that released DP statistics) the nodes rank with the on-device
    scorer over that release, the model weighted in by its settings.
    """
    config = ConfigRecord({**settings, STAGE: stage})  # type: ignore[dict-item]
    messages = [
        Message(
            content=RecordDict({ARRAYS: arrays, CONFIG: config}),
            dst_node_id=node_id,
            message_type=MessageType.EVALUATE,
        )
        for node_id in grid.get_node_ids()
    ]
    if scorer is not None:  # the nodes rank as their users' devices do
        for message in messages:
            scorer.attach(message.content)
    replies = [reply for reply in grid.send_and_receive(messages) if not reply.has_error()]
    if not replies:
        raise RuntimeError(f"no node returned {stage} metrics")
    logger.info("%s metrics from %d of %d nodes", stage, len(replies), len(messages))
    return metrics_from_sums(sum_metric_records([reply.content for reply in replies], WEIGHT_KEY))


def deployment_figures(
    grid: Grid,
    arrays: ArrayRecord,
    settings: dict[str, object],
    scorer: ScorerRelease | None = None,
) -> dict[str, dict[str, float]]:
    """The released model's validation and test figures (the scorer's, if any), from the nodes."""
    return {
        stage: federated_metrics(grid, arrays, settings, stage, scorer)
        for stage in (VALID_STAGE, TEST_STAGE)
    }
