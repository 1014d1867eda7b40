"""End to end: SuperLink + three SuperNodes on 127.0.0.1 with TLS and node authentication.

Two nodes hold disjoint halves of the users (one also has an item the server does not
know), the third a malformed click log. The server holds no user data: only the public
item list and the population size; evaluation is federated. Real Flower processes, warm
SuperExecs, two rounds; every process is stopped afterwards.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from common.federation.config import FederatedConfig
from common.privacy.ledger import read_ledger
from deploy.local import CONNECTION, LocalDeployment
from deploy.run import submit_run
from simulations.superlink import flower_env
from tests.helpers import deployment_run_config

TINY_RUN = {"model": "lstm", "dim": 8, "layers": 1, "partition-mode": "cross-device",
            "max-len": 10, "dropout": 0.0, "num-server-rounds": 2,
            "fraction-train": 1.0, "local-epochs": 2, "lr": 0.1, "batch-size": 16,
            "deployment-nodes": 3, "dp": "local", "noise-multiplier": 1.0,
            "clip-norm": 1.0, "fraction-evaluate": 1.0, "population": 20}  # fmt: skip


def write_node_logs(cycle_log: Path, folder: Path) -> list[Path]:
    """Users u0-u9 on node 1, u10-u19 (plus an unknown item) on node 2, garbage on node 3."""
    header, *rows = cycle_log.read_text().splitlines()
    halves = (
        [r for r in rows if int(r.split(",")[0][1:]) < 10],
        [r for r in rows if int(r.split(",")[0][1:]) >= 10] + ["u10,not-in-catalogue,99999"],
    )
    paths = []
    for index, lines in enumerate(halves, start=1):
        path = folder / f"node-{index}" / "clicks.csv"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join([header, *lines]) + "\n")
        paths.append(path)
    bad = folder / "node-3" / "clicks.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("user,item,timestamp\nu1,i1,100\nu1,i2,yesterday-ish\n")
    return [*paths, bad]


@pytest.mark.simulation
def test_tls_deployment_with_node_auth_trains_and_names_the_broken_node(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    node_logs = write_node_logs(cycle_log, tmp_path / "nodes")
    config = deployment_run_config(cycle_log, tmp_path, TINY_RUN)  # the shop's item list only
    FederatedConfig.from_run_config(config)
    results = tmp_path / "results"
    results.mkdir()

    deployment = LocalDeployment(tmp_path / "deployment", node_logs, env=flower_env())
    with deployment:
        processes = list(deployment.processes)
        summary = submit_run(CONNECTION, config, results, deployment.env, timeout=240)

    assert len(processes) == 1 + 2 * 3  # SuperLink, then a SuperNode + warm SuperExec per node
    assert all(process.poll() is not None for process in processes)
    assert summary["status"] == "completed"
    assert (results / "checkpoint.pt").is_file() and not (results / "best_checkpoint.pt").exists()
    assert summary["released_round"] == 2 and summary["release_selection"] == "last round"
    with (results / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["round"], r["clients"]) for r in rows] == [("0", ""), ("1", "2.0"), ("2", "2.0")]
    assert not any(r["valid_ndcg@10"] for r in rows)  # no server-side validation
    # DP-SGD noise on 20 users decides whether 2 rounds improve the model; they must move it
    assert float(rows[2]["fed_ndcg@10"]) != pytest.approx(float(rows[1]["fed_ndcg@10"]))
    assert summary["test"]["count"] == 20 and summary["valid"]["count"] == 20  # the nodes' sums
    assert "release of users' data" in summary["released_metrics"]
    errors = summary["node_errors"]
    assert [(e["server_round"], e["message_type"]) for e in errors] == [
        (1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate"),
        (2, "evaluate"), (2, "evaluate"),  # the released model's federated valid and test
    ]  # fmt: skip
    assert len({e["node_id"] for e in errors}) == 1
    expected = f"{node_logs[2]}, line 3: field 'timestamp' must be a number"
    assert all(expected in e["reason"] and "DataFormatError" in e["reason"] for e in errors)
    assert expected in (tmp_path / "deployment" / "node-3.log").read_text()
    node_2_log = (tmp_path / "deployment" / "node-2.log").read_text()
    assert "dropped 1 interactions with 1 item ids not in the server's catalogue" in node_2_log
    keys = tmp_path / "deployment" / "keys"
    assert {p.name for p in keys.iterdir()} >= {"ca.crt", "server.pem", "node-3.pub"}
    superlink_log = (tmp_path / "deployment" / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in superlink_log  # TLS on
    assert superlink_log.count("Created node_id=") == 3  # every node registered by its key
    assert json.loads((results / "summary.json").read_text())["node_errors"] == errors
    for node in ("node-1", "node-2"):  # each node keeps its own DP-SGD ledger, one per round
        entries = read_ledger(tmp_path / "nodes" / node / "ledger.jsonl")
        assert [(e.round, e.mechanism) for e in entries] == [(1, "dp-sgd"), (2, "dp-sgd")]
        assert entries[0].epsilon < entries[1].epsilon
