"""End to end: the nodes' signed receipts catch a server that rewrote its ledger consistently.

SuperLink (TLS, node authentication) + two SuperNodes on 127.0.0.1, each node with its
receipt key (its node-authentication key); a user-level DP cohort run of 3 rounds whose
server signs its ledger with the deployment's ledger key. The honest run passes
``fedseqrec-audit RUN --receipts NODE1 NODE2`` with the registered public keys. Then the
server's side is forged as only the key holder can: every noise multiplier doubled,
epsilons recomputed, the chain rebuilt, the entries signed again, the heads in the
summary and checkpoint rewritten. The ledger checks alone have nothing to hold on to;
the receipts name the noise multiplier of every round on every node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.federation.config import FederatedConfig
from common.privacy.node_receipts import RECEIPTS_FILE, read_receipts
from common.privacy.receipts import released_model_sha256
from common.privacy.report import main as audit
from common.privacy.signing import Signer
from deploy.local import CONNECTION, LocalDeployment
from deploy.run import submit_run
from simulations.superlink import flower_env
from tests.helpers import deployment_run_config, forge_noise_consistently, node_logs

ROUNDS = 3
RUN = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 10, "dropout": 0.0,
       "num-server-rounds": ROUNDS, "local-epochs": 1, "lr": 0.1, "batch-size": 16,
       "deployment-nodes": 2, "partition-mode": "cohort", "dp": "user",
       "noise-multiplier": 1.0, "clip-norm": 1.0, "fraction-train": 1.0,
       "population": 20}  # fmt: skip


@pytest.mark.simulation
def test_receipts_pass_an_honest_run_and_name_a_consistent_forgery(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Prepare: the deployment, its keys, and the run config with the ledger key
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    config = deployment_run_config(cycle_log, tmp_path, RUN)
    results = tmp_path / "results"
    results.mkdir()
    nodes = [path.parent for path in node_logs(cycle_log, tmp_path / "nodes")]
    deployment = LocalDeployment(tmp_path / "deployment", [n / "clicks.csv" for n in nodes],
                                 env=flower_env())  # fmt: skip

    # Execute: the honest run, its audit with the receipts, the forgery, the audit again
    with deployment:
        keys = deployment.credentials
        assert keys is not None
        config["ledger-key"] = str(keys.ledger_key)
        FederatedConfig.from_run_config(config)
        summary = submit_run(CONNECTION, config, results, deployment.env, timeout=300)
    registered = ["--node-keys", *(str(key) for key in keys.node_public_keys)]
    honest_code = audit([str(results), "--receipts", *map(str, nodes), *registered])
    honest = capsys.readouterr().out
    forge_noise_consistently(results, 2.0, Signer.from_file(keys.ledger_key))
    audit([str(results)])  # the ledger checks alone: no receipt, nothing to compare with
    capsys.readouterr()
    forged_code = audit([str(results), "--receipts", *map(str, nodes), *registered])
    forged = capsys.readouterr().out

    # Assert: every node received each round's announcement and the released model
    assert summary["status"] == "completed" and summary["released_round"] == ROUNDS
    _, released = released_model_sha256(results / "checkpoint.pt")
    for node in nodes:
        receipts = read_receipts(node / RECEIPTS_FILE).receipts
        train = [r for r in receipts if r.message == "train"]
        assert [(r.round, r.model_round) for r in train] == [(1, 0), (2, 1), (3, 2)]
        assert {(r.mechanism, r.noise_multiplier, r.run_id) for r in train} == {
            ("dp-fedavg", 1.0, results.name)
        }
        final = [r for r in receipts if r.message == "evaluate"]
        assert [(r.model_round, r.model_sha256) for r in final] == [(ROUNDS, released)] * 2
    assert honest_code == 0, honest
    assert "receipts: 10 signed receipt(s)" in honest and "keys from --node-keys" in honest
    assert "server.jsonl: all 3 entries of this run are signed by the ledger key" in honest
    assert forged_code == 1, forged
    lines = [line.strip() for line in forged.split("FAILED")[1].splitlines()[1:]]
    expected = {
        f"node-{index} (node {node_id}), round {server_round}: noise_multiplier is 2.0 in "
        f"the ledger but 1.0 in the node's receipt"
        for index, node in enumerate(nodes, start=1)
        for node_id in {r.node_id for r in read_receipts(node / RECEIPTS_FILE).receipts}
        for server_round in range(1, ROUNDS + 1)
    }
    receipt_lines = {line for line in lines if "in the node's receipt" in line}
    assert receipt_lines == expected
    # the released model's own noise tells too (noise evidence): each round measures half
    noise_lines = [line for line in lines if "carries less noise than its ledger" in line]
    assert len(noise_lines) == ROUNDS and len(lines) == len(expected) + ROUNDS
