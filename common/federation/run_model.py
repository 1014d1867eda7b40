"""The model of a federated run, with the public item attributes its item table needs.

Server and clients build the same model from the run config: with ``item-embedding``
other than ``free``, the item -> attribute map comes from the run config's
``item-attributes`` (public catalogue data, the same file for every party), mapped onto
the catalogue's item ids. The map is read once per process (an explicit ``lru_cache``,
as :func:`common.data.partitioning.load_split` does), since a client builds its model for
every message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from common.data.attributes import load_item_attributes
from common.federation.checkpoints import ItemId, dataset_item_ids
from common.federation.config import FederatedConfig
from common.models import SequenceRecommender, build_model


def run_model(
    config: FederatedConfig, n_items: int, item_ids: Sequence[ItemId] | None = None
) -> SequenceRecommender:
    """``build_model`` for the run; ``item_ids`` is the catalogue (None: the data set's)."""
    model_config = config.model_config()
    if model_config.item_embedding == "free":
        return build_model(model_config, n_items)
    ids = tuple(item_ids) if item_ids is not None else None
    padded = run_attributes(
        config.item_attributes, config.dataset, config.dataset_columns,
        config.dataset_time_unit, ids,
    )  # fmt: skip
    return build_model(model_config, n_items, padded)


@functools.lru_cache(maxsize=2)
def run_attributes(
    source: str, dataset: str, columns: str, time_unit: str, item_ids: tuple[ItemId, ...] | None
) -> np.ndarray:
    """The padded item -> attribute index matrix of a run (read-only; cached per process)."""
    ids = item_ids if item_ids is not None else dataset_item_ids(dataset, columns, time_unit)
    attributes = load_item_attributes(source, ids, dataset)
    if attributes is None:
        raise ValueError("item-embedding other than 'free' needs item-attributes")
    padded = attributes.padded()
    padded.setflags(write=False)
    return padded
