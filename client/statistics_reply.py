"""A client's part of the DP global statistics: its users' bounded contributions, summed.

The server's statistics query (``statistics = true``, before any training round) asks
every Flower client for the sum of its users' contributions to item popularity and to
the attribute-to-item transitions (:mod:`common.privacy.statistics`: each user's vector
has norm at most 1 per statistic). The client counts each user's whole history as a
device holds it when the statistics are released: in the leave-one-out protocol
everything but the held-out test item (the test stage's input, as the popularity and
Markov baselines are fitted), or, for the simulation harness's validation figures
(``stage = valid``), the training sequence only. The public item attributes come from
the run config's ``item-attributes`` (a simulation) or the node config's (an edge node
holds the public catalogue too; without it, the run config's path on the node,
:mod:`client.node_scoring`). The server adds the Gaussian noise to the total and records
the release.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.node_scoring import AttributeLists
from common.data.partitioning import ClientPartition
from common.federation.config import FederatedConfig
from common.federation.messages import (
    ARRAYS,
    METRICS,
    POPULARITY,
    STAGE,
    TEST_STAGE,
    TRANSITION_CELLS,
    TRANSITION_VALUES,
    TRANSITIONS_PER_USER,
    USERS,
    VALID_STAGE,
)
from common.privacy.statistics import summed_contributions


def statistics_reply(
    msg: Message,
    config: FederatedConfig,
    partition: ClientPartition,
    settings: ConfigRecord,
    attributes: AttributeLists,
) -> Message:
    """Reply the sums of this client's users' popularity and transition contributions.

    ``attributes``: the public item attributes as the scorer's lists and their count
    (:func:`client.node_scoring.public_attribute_lists`).
    """
    lists, n_attributes = attributes
    per_user = int(settings.get(TRANSITIONS_PER_USER, config.transitions_per_user))  # type: ignore[arg-type]
    stage = str(settings.get(STAGE, TEST_STAGE))
    histories = (
        partition.split.train if stage == VALID_STAGE else partition.split.inputs(TEST_STAGE)
    )
    popularity, cells, values = summed_contributions(histories, lists, n_attributes, per_user)
    arrays = ArrayRecord(
        {
            POPULARITY: Array(popularity),
            TRANSITION_CELLS: Array(np.ascontiguousarray(cells)),
            TRANSITION_VALUES: Array(values),
        }
    )
    metrics = MetricRecord({USERS: len(partition.users)})
    return Message(content=RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)
