"""End to end: DP global statistics released from edge nodes, then a model, over TLS.

SuperLink (TLS, node authentication) + two SuperNodes on 127.0.0.1 holding disjoint
halves of the cycle log's users; the server holds only the public item list, the public
attribute file and the population. A user-level DP cohort run releases the statistics
from the nodes' logs (half the budget), trains two rounds, and the nodes evaluate with the
on-device scorer (model weighted in); the audit checks the ledger against the nodes'
signed receipts. Then a node ranks one of its users with
``fedseqrec-recommend`` from the run folder's three files and its own attribute copy.

Last, the server's side is forged as only the key holder can: every round's noise
multiplier doubled, epsilons recomputed, the chain rebuilt, the entries signed again with
the deployment's ledger key, the heads in the summary and checkpoints rewritten. The
ledger checks alone have nothing to hold on to; the receipts name the noise multiplier
of every round on every node, and the released model's own noise tells too.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.recommend import main as recommend_main
from common.federation.config import FederatedConfig
from common.privacy.ledger import read_ledger
from common.privacy.node_receipts import RECEIPTS_FILE, read_receipts
from common.privacy.receipts import released_model_sha256
from common.privacy.report import main as audit
from common.privacy.signing import Signer
from common.privacy.statistics import STATISTICS_FILE
from deploy.certificates import DeploymentCredentials
from deploy.local import CONNECTION, LocalDeployment
from deploy.run import submit_run
from simulations.superlink import flower_env
from tests.helpers import (
    deployment_run_config,
    forge_noise_consistently,
    node_logs,
    write_cycle_attributes,
)

MODEL_WEIGHT = 2.0
RUN = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 10, "dropout": 0.0,
       "num-server-rounds": 2, "local-epochs": 1, "lr": 0.1, "batch-size": 16,
       "deployment-nodes": 2, "partition-mode": "cohort", "dp": "user",
       "target-epsilon": 8.0, "statistics": True, "statistics-share": 0.5,
       "clip-norm": 1.0, "fraction-train": 1.0, "fraction-evaluate": 1.0,
       "population": 20, "scorer-similarity-weight": 1.0,
       "scorer-model-weight": MODEL_WEIGHT}  # fmt: skip


def recommend_json(
    folder: Path, items: str, attributes: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``fedseqrec-recommend --json`` from a copy of the run's files on a node."""
    capsys.readouterr()
    flags = ["--k", "10", "--json", "--item-attributes", str(attributes)]
    code = recommend_main(["--checkpoint", str(folder / "checkpoint.pt"), "--items", items, *flags])
    assert code == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.mark.simulation
def test_edge_nodes_release_statistics_train_and_a_node_ranks_with_both(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Prepare: the server's public files, the nodes' logs, the run config
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    attributes = write_cycle_attributes(cycle_log, tmp_path / "attributes.csv")
    config = deployment_run_config(cycle_log, tmp_path, {**RUN, "item-attributes": str(attributes)})
    results = tmp_path / "results"
    results.mkdir()
    logs = node_logs(cycle_log, tmp_path / "nodes")

    # Execute: the deployment run, its audit
    with LocalDeployment(tmp_path / "deployment", logs, env=flower_env()) as deployment:
        keys = deployment.credentials
        assert keys is not None
        config["ledger-key"] = str(keys.ledger_key)
        FederatedConfig.from_run_config(config)
        summary = submit_run(CONNECTION, config, results, deployment.env, timeout=300)
    nodes = [str(log.parent) for log in logs]  # each node's signed receipts
    registered = ["--node-keys", *(str(key) for key in keys.node_public_keys)]
    report = ["--json", str(results / "audit.json"), "--receipts", *nodes, *registered]
    audit_code = audit([str(results), *report])
    audit_output = capsys.readouterr().out

    # Assert: one budget, statistics first; the nodes' figures are the scorer's
    assert summary["status"] == "completed" and summary["released_round"] == 2
    assert summary["node_errors"] == []
    entries = read_ledger(results / "ledger" / "server.jsonl")
    assert [(e.round, e.mechanism) for e in entries] == [
        (0, "dp-statistics"), (1, "dp-fedavg"), (2, "dp-fedavg"),
    ]  # fmt: skip
    assert 8.0 * 0.98 <= entries[-1].epsilon <= 8.0
    assert (results / STATISTICS_FILE).is_file() and (results / "scorer.json").is_file()
    assert json.loads((results / "scorer.json").read_text())["settings"]["model_weight"] == 2.0
    assert audit_code == 0, audit_output
    assert "keys from --node-keys" in audit_output
    assert "server.jsonl: all 3 entries of this run are signed by the ledger key" in audit_output
    assert json.loads((results / "audit.json").read_text())["passed"] is True
    assert summary["scoring"].startswith("on-device scorer")
    assert summary["released_metrics"] and 0.0 <= summary["test"]["hr@10"] <= 1.0
    with (results / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["fed_hr@10"] for row in rows[1:])  # the nodes' per-round validation

    # Execute: node 1 holds the run's three files and its own copy of the attributes
    node = logs[0].parent
    on_node, statistics_only = node / "model", node / "statistics-only"
    for folder in (on_node, statistics_only):
        folder.mkdir()
        for name in ("checkpoint.pt", STATISTICS_FILE, "scorer.json"):
            shutil.copy(results / name, folder / name)
    scorer_json = json.loads((statistics_only / "scorer.json").read_text())
    scorer_json["settings"]["model_weight"] = 0.0
    (statistics_only / "scorer.json").write_text(json.dumps(scorer_json))
    node_attributes = shutil.copy(attributes, node / "attributes.csv")
    history = [r.split(",")[1] for r in logs[0].read_text().splitlines() if r.startswith("u0,")]
    items = ",".join(history[-5:])  # user u0's five most recent items, oldest first
    both = recommend_json(on_node, items, Path(node_attributes), capsys)
    alone = recommend_json(statistics_only, items, Path(node_attributes), capsys)

    # Assert: the model's scores moved the statistics' ranking
    assert both["scorer"]["kind"] == alone["scorer"]["kind"] == "on-device"
    assert both["scorer"]["settings"]["model_weight"] == MODEL_WEIGHT
    assert alone["scorer"]["settings"]["model_weight"] == 0.0
    listed = [r["item"] for r in both["recommendations"]]
    assert len(listed) == 10 and not set(items.split(",")) & set(listed)
    assert listed != [r["item"] for r in alone["recommendations"]]
    scores = {r["item"]: r["score"] for r in alone["recommendations"]}
    shared = [r for r in both["recommendations"] if r["item"] in scores]
    assert not np.allclose([r["score"] for r in shared], [scores[r["item"]] for r in shared])
    assert_receipts_catch_a_forgery(results, [log.parent for log in logs], keys, capsys)


def assert_receipts_catch_a_forgery(
    results: Path, nodes: list[Path], keys: DeploymentCredentials,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Every node received each round's announcement and the released model; a forgery of
    the rounds' noise that the ledger's key holder made consistent fails on both nodes'
    receipts and on the model's own noise, and on nothing else."""
    noise = json.loads((results / "summary.json").read_text())["privacy"]["noise_multiplier"]
    _, released = released_model_sha256(results / "checkpoint.pt")
    receipts_of = {node: read_receipts(node / RECEIPTS_FILE).receipts for node in nodes}
    for receipts in receipts_of.values():
        train = [r for r in receipts if r.message == "train"]
        assert [(r.round, r.model_round) for r in train] == [(1, 0), (2, 1)]
        assert {(r.mechanism, r.noise_multiplier, r.run_id) for r in train} == {
            ("dp-fedavg", noise, results.name)
        }
        final = [r for r in receipts if r.message == "evaluate"][-1]
        assert (final.model_round, final.model_sha256) == (2, released)

    forge_noise_consistently(results, 2.0, Signer.from_file(keys.ledger_key), "dp-fedavg")
    capsys.readouterr()
    registered = ["--node-keys", *(str(key) for key in keys.node_public_keys)]
    code = audit([str(results), "--receipts", *map(str, nodes), *registered])
    forged = capsys.readouterr().out

    assert code == 1, forged
    lines = [line.strip() for line in forged.split("FAILED")[1].splitlines()[1:]]
    expected = {
        f"node-{index} (node {node_id}), round {server_round}: noise_multiplier is "
        f"{2 * noise} in the ledger but {noise} in the node's receipt"
        for index, node in enumerate(nodes, start=1)
        for node_id in {r.node_id for r in receipts_of[node]}
        for server_round in (1, 2)
    }
    assert {line for line in lines if "in the node's receipt" in line} == expected
    noise_lines = [line for line in lines if "carries less noise than its ledger" in line]
    assert len(noise_lines) == 2 and len(lines) == len(expected) + 2
