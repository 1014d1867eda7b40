"""Which users a simulated node holds, from its node config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.data.partitioning import ClientPartition, load_partition, load_split
from common.federation.config import FederatedConfig


def client_partition(config: FederatedConfig, node_config: Mapping[str, Any]) -> ClientPartition:
    """This node's partition, checked against the number of partitions the config implies."""
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise ValueError(f"node config lacks {key!r} (got keys {sorted(node_config)})")
    partition_id, num_partitions = (
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
    )
    n_users = load_split(*data_source(config)).n_users
    expected = config.num_partitions(n_users)
    if num_partitions != expected:
        raise ValueError(
            f"the federation has {num_partitions} nodes but partition-mode "
            f"{config.partition_mode!r} gives {expected} clients for {n_users} users"
        )
    return load_partition(
        config.dataset,
        num_partitions,
        partition_id,
        config.seed,
        config.dataset_columns,
        config.dataset_time_unit,
    )


def data_source(config: FederatedConfig) -> tuple[str, str, str]:
    """``load_split``'s arguments for the run's data set: path, column spec, time unit."""
    return config.dataset, config.dataset_columns, config.dataset_time_unit
