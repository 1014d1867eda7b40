"""An edge node's own data: its node config, its click log, its sequences in model indices.

A SuperNode on an edge node is started with ``--node-config`` naming its local click log
and its privacy budget, for example::

    flower-supernode ... --node-config 'data-path="/srv/clicks.csv" budget-epsilon=8.0'

Keys (kebab-case, like the run config):

- ``data-path`` (required): the node's click log, any format :mod:`common.data.loaders`
  reads (u.data, Beauty-style .txt, .csv/.tsv/.parquet).
- ``budget-epsilon``, ``budget-delta`` (optional): the node's privacy budget.
- ``ledger-path`` (optional): where the node's privacy ledger goes; default
  ``<folder of data-path>/ledger.jsonl``.
- ``data-columns`` (optional): column names of a CSV / Parquet log, e.g.
  ``"user=customer_id,item=product_sku,timestamp=event_time"``
  (:mod:`common.data.log_format`).
- ``data-time-unit`` (optional): unit of numeric timestamps, ``s``, ``ms``, ``us``, ``ns``
  or ``auto`` (default: detected, with a warning unless seconds).
- ``item-attributes`` (optional): the public catalogue's item attributes, a path to a
  JSON / CSV file (:mod:`common.data.attributes`) or ``builtin`` (the file beside a
  Beauty-style ``data-path``); default none.
- ``receipt-key`` (optional): the node's private key (its node-authentication key): with
  it the node keeps signed receipts of what the server sent, ``receipts.jsonl`` in the
  folder of ``data-path`` (:mod:`common.privacy.node_receipts`); default none.

The node maps its item ids onto the server's catalogue (:mod:`common.data.catalogue`), drops
the items the model does not know (logged with counts), orders each user's interactions
by (timestamp, item id) and applies the leave-one-out split of the evaluation protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.attributes import ItemAttributes, load_item_attributes
from common.data.catalogue import ItemCatalogue
from common.data.loaders import DataFormatError, LogFormat, dataset_log_format, load_dataset
from common.data.partitioning import ClientPartition
from common.data.sequences import SequenceDataset, build_sequences, leave_one_out_split
from common.privacy.calibration import check_population

logger = logging.getLogger("fedseqrec.node")

DATA_PATH_KEY = "data-path"
NODE_KEYS = (
    DATA_PATH_KEY,
    "budget-epsilon",
    "budget-delta",
    "ledger-path",
    "data-columns",
    "data-time-unit",
    "item-attributes",
    "population",
    "receipt-key",
)
LEDGER_FILENAME = "ledger.jsonl"


@dataclass(frozen=True)
class NodeDataConfig:
    """The node-config keys of an edge node (see the module docstring)."""

    data_path: Path
    ledger_path: Path
    budget_epsilon: float | None = None
    budget_delta: float | None = None
    log_format: LogFormat = LogFormat()
    item_attributes: str = ""
    receipt_key: Path | None = None  # signs the node's receipts; None: it keeps none

    @property
    def node_folder(self) -> Path:
        """The folder of the node's click log, where its receipts are kept."""
        return self.data_path.parent

    def __post_init__(self) -> None:
        if self.budget_epsilon is not None and not 0 < self.budget_epsilon < math.inf:
            raise ValueError(
                f"node config 'budget-epsilon' must be a finite number > 0, got "
                f"{self.budget_epsilon}"
            )
        if self.budget_delta is not None and not 0 < self.budget_delta < 1:
            raise ValueError(
                f"node config 'budget-delta' must be in (0, 1), got {self.budget_delta}"
            )

    @staticmethod
    def applies_to(node_config: Mapping[str, Any]) -> bool:
        """Whether a node config describes an edge node with its own data."""
        return DATA_PATH_KEY in node_config

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeDataConfig:
        """Parse Flower's node config; unknown keys and wrong types name the key."""
        unknown = sorted(set(node_config) - set(NODE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown node config key(s) {', '.join(unknown)} (known: {', '.join(NODE_KEYS)})"
            )
        raw_path = node_config.get(DATA_PATH_KEY)
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise ValueError(f"node config 'data-path' must be a file path, got {raw_path!r}")
        data_path = Path(raw_path).expanduser()
        ledger = node_config.get("ledger-path", str(data_path.parent / LEDGER_FILENAME))
        if not isinstance(ledger, str) or not ledger.strip() or Path(ledger).is_dir():
            raise ValueError(f"node config 'ledger-path' must be a file path, got {ledger!r}")
        if "population" in node_config:
            try:
                check_population(node_config["population"])
            except ValueError as error:
                raise ValueError(f"node config 'population': {error}") from None
        try:
            log_format = dataset_log_format(
                str(data_path),
                _optional_text(node_config, "data-columns"),
                _optional_text(node_config, "data-time-unit"),
            )
        except ValueError as error:
            raise ValueError(f"node config 'data-columns' / 'data-time-unit': {error}") from None
        return cls(
            data_path=data_path,
            ledger_path=Path(ledger).expanduser(),
            budget_epsilon=_optional_float(node_config, "budget-epsilon"),
            budget_delta=_optional_float(node_config, "budget-delta"),
            log_format=log_format,
            item_attributes=_optional_text(node_config, "item-attributes"),
            receipt_key=_optional_path(node_config, "receipt-key"),
        )

    def load_attributes(self, catalogue: ItemCatalogue) -> ItemAttributes | None:
        """The node's public item attributes on the server's item indices (None if unset)."""
        return load_item_attributes(self.item_attributes, catalogue.item_ids, str(self.data_path))


def _optional_text(node_config: Mapping[str, Any], key: str) -> str:
    value = node_config.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"node config {key!r} must be a string, got {value!r}")
    return value


def _optional_path(node_config: Mapping[str, Any], key: str) -> Path | None:
    value = _optional_text(node_config, key)
    return Path(value).expanduser() if value.strip() else None


def _optional_float(node_config: Mapping[str, Any], key: str) -> float | None:
    value = node_config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"node config {key!r} must be a number, got {value!r}")
    return float(value)


def node_sequences(
    data_path: Path, catalogue: ItemCatalogue, log_format: LogFormat | None = None
) -> SequenceDataset:
    """The node's sequences with items as the server model's indices (unknown items dropped)."""
    log = load_dataset(data_path, log_format)
    encoded = catalogue.encode(log)
    if encoded.dropped_interactions:
        logger.warning(
            "%s: dropped %d interactions with %d item ids not in the server's catalogue "
            "of %d items (%d users left without any known item)",
            data_path,
            encoded.dropped_interactions,
            encoded.unknown_items,
            catalogue.n_items,
            encoded.users_without_known_items,
        )
    if encoded.log.frame.empty:
        raise DataFormatError(
            f"{data_path}: none of its {len(log.frame)} interactions has an item id in the "
            f"server's catalogue of {catalogue.n_items} items"
        )
    local = build_sequences(encoded.log, name=str(data_path))
    # build_sequences numbers the node's items 1..k in sorted order of their model index;
    # map that local numbering back to the model's indices.
    to_model = np.concatenate([[0], local.item_ids.astype(np.int64)])
    return SequenceDataset(
        name=local.name,
        sequences=[to_model[sequence] for sequence in local.sequences],
        timestamps=local.timestamps,
        user_ids=local.user_ids,
        item_ids=np.asarray(catalogue.item_ids, dtype=object),
    )


def load_node_partition(
    settings: NodeDataConfig, catalogue: ItemCatalogue, node_id: int
) -> ClientPartition:
    """The node's users as a client partition (``partition_id`` = Flower node id)."""
    dataset = node_sequences(settings.data_path, catalogue, settings.log_format)
    split = leave_one_out_split(dataset)
    logger.info(
        "%s: %d users, %d interactions mapped onto %d catalogue items",
        settings.data_path,
        dataset.n_users,
        dataset.n_interactions,
        catalogue.n_items,
    )
    return ClientPartition(node_id, np.arange(dataset.n_users), split)
