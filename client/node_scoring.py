"""What a node scores with besides the model: the public item attributes and a released scorer.

The statistics query and, in a run that released DP statistics, every evaluation need
the public item attributes on the model's item indices. An edge node (node config
``data-path``) reads its node config's ``item-attributes`` (``builtin``: the file beside
its ``data-path``), else the run config's ``item-attributes`` path, which must then
exist on the node too; a simulation client reads the run config's, over the data set's
catalogue. An evaluation message that carries the released statistics
(:mod:`common.federation.scorer_messages`) is scored with the on-device scorer, as the
node's users' devices score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, RecordDict

from common.data.attributes import load_item_attributes
from common.data.catalogue import ItemCatalogue
from common.data.node_data import NodeDataConfig
from common.evaluation.on_device import OnDeviceScorer, attribute_lists
from common.federation.checkpoints import dataset_item_ids
from common.federation.config import FederatedConfig
from common.federation.node_partition import data_source
from common.federation.scorer_messages import ScorerRelease

AttributeLists = tuple[list[npt.NDArray[np.int64]], int]


def public_attribute_lists(
    config: FederatedConfig, node_config: Mapping[str, Any], settings: ConfigRecord
) -> AttributeLists:
    """The public item attributes as the scorer's lists per item index, and their count.

    ``settings`` is the message's ConfigRecord (an edge node's catalogue comes with it).
    """
    if NodeDataConfig.applies_to(node_config):
        node = NodeDataConfig.from_node_config(node_config)
        item_ids: list[object] = list(ItemCatalogue.from_config(settings).item_ids)
        source, dataset = node.item_attributes, str(node.data_path)
        if not source.strip():  # the run's file, at the same path on this node
            source, dataset = config.item_attributes, config.dataset
    else:
        item_ids = list(dataset_item_ids(*data_source(config)))
        source, dataset = config.item_attributes, config.dataset
    attributes = load_item_attributes(source, item_ids, dataset)
    if attributes is None:
        raise ValueError(
            "the DP statistics need the public item attributes: set item-attributes in the "
            "node config (or the run config, a path that exists on this node)"
        )
    return attribute_lists(attributes)


def evaluation_scorer(
    content: RecordDict,
    config: FederatedConfig,
    node_config: Mapping[str, Any],
    settings: ConfigRecord,
) -> OnDeviceScorer | None:
    """The on-device scorer an evaluation message asks for (None: the model alone)."""
    release = ScorerRelease.received(content)
    if release is None:
        return None
    return release.scorer(*public_attribute_lists(config, node_config, settings))
