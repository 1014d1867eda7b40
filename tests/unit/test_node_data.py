"""An edge node's own data: node config, item mapping, leave-one-out split, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.catalogue import ItemCatalogue
from common.data.loaders import DataFormatError, load_dataset
from common.data.node_data import NodeDataConfig, load_node_partition, node_sequences
from common.data.partitioning import load_split
from common.data.sequences import build_sequences


def _node_log(cycle_log: Path, path: Path, users: set[str], extra: list[str]) -> Path:
    """The rows of ``users`` from the shared cycle log, plus ``extra`` rows."""
    header, *rows = cycle_log.read_text().splitlines()
    kept = [row for row in rows if row.split(",")[0] in users]
    path.write_text("\n".join([header, *kept, *extra]) + "\n")
    return path


def test_node_config_defaults_and_checks(tmp_path: Path) -> None:
    data = tmp_path / "node" / "clicks.csv"

    settings = NodeDataConfig.from_node_config({"data-path": str(data), "budget-epsilon": 8})

    assert settings.ledger_path == tmp_path / "node" / "ledger.jsonl"
    assert (settings.budget_epsilon, settings.budget_delta) == (8.0, None)
    with pytest.raises(ValueError, match=r"unknown node config key\(s\) data_path"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "data_path": "x.csv"})
    with pytest.raises(ValueError, match="'budget-delta' must be in \\(0, 1\\), got 2.0"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "budget-delta": 2.0})
    with pytest.raises(ValueError, match="'budget-epsilon' must be a number, got 'high'"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "budget-epsilon": "high"})
    assert not NodeDataConfig.applies_to({"partition-id": 0, "num-partitions": 2})


def test_node_sequences_use_the_server_indices(cycle_log: Path, tmp_path: Path) -> None:
    server = load_split(str(cycle_log))
    server_users = build_sequences(load_dataset(cycle_log)).user_ids.tolist()
    catalogue = ItemCatalogue.from_dataset(str(cycle_log))
    node_file = _node_log(cycle_log, tmp_path / "node.csv", {"u3", "u7"}, ["u7,unseen,99999"])

    partition = load_node_partition(
        NodeDataConfig.from_node_config({"data-path": str(node_file)}), catalogue, node_id=5
    )

    assert partition.split.n_items == catalogue.n_items
    assert partition.partition_id == 5
    rows = [server_users.index("u3"), server_users.index("u7")]  # node order: u3, u7
    for node_user, server_user in enumerate(rows):
        assert np.array_equal(partition.split.train[node_user], server.train[server_user])
    assert partition.split.valid_target.tolist() == server.valid_target[rows].tolist()
    assert partition.split.test_target.tolist() == server.test_target[rows].tolist()


def test_malformed_or_foreign_node_logs_fail_clearly(cycle_log: Path, tmp_path: Path) -> None:
    catalogue = ItemCatalogue.from_dataset(str(cycle_log))
    malformed = tmp_path / "bad.csv"
    malformed.write_text("user,item,timestamp\nu1,i1,100\nu1,i2,soon\n")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("user,item\nu1,x1\nu1,x2\n")

    with pytest.raises(DataFormatError, match=r"bad.csv, line 3: field 'timestamp' must be"):
        node_sequences(malformed, catalogue)
    with pytest.raises(DataFormatError, match="none of its 2 interactions has an item id"):
        node_sequences(foreign, catalogue)
    with pytest.raises(DataFormatError, match="missing.csv: file not found"):
        node_sequences(tmp_path / "missing.csv", catalogue)


def test_node_log_with_its_own_column_names_and_millisecond_times(
    cycle_log: Path, tmp_path: Path
) -> None:
    server = load_split(str(cycle_log))
    server_users = build_sequences(load_dataset(cycle_log)).user_ids.tolist()
    catalogue = ItemCatalogue.from_dataset(str(cycle_log))
    header, *rows = cycle_log.read_text().splitlines()
    shop = ["sku,event_ms,shopper"] + [
        f"{item},{int(time) * 1000},{user}"
        for user, item, time in (row.split(",") for row in reversed(rows))
        if user == "u4"
    ]
    node_file = tmp_path / "shop.csv"
    node_file.write_text("\n".join(shop) + "\n")
    settings = NodeDataConfig.from_node_config(
        {
            "data-path": str(node_file),
            "data-columns": "user=shopper,item=sku,timestamp=event_ms",
            "data-time-unit": "ms",
        }
    )

    partition = load_node_partition(settings, catalogue, node_id=1)

    row = server_users.index("u4")
    assert np.array_equal(partition.split.train[0], server.train[row])
    assert partition.split.test_target.tolist() == [server.test_target[row]]
    with pytest.raises(ValueError, match="node config 'data-columns'.*unknown role 'shop'"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "data-columns": "shop=a"})
    with pytest.raises(ValueError, match="node config 'data-columns'.*time unit must be"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "data-time-unit": "hours"})
    with pytest.raises(ValueError, match="node config 'item-attributes' must be a string"):
        NodeDataConfig.from_node_config({"data-path": "x.csv", "item-attributes": 3})
