"""End to end: a deployment whose SuperLink and ServerApp are SIGKILLed mid-run carries on.

SuperLink (TLS, node auth, Flower's ``--database``) + two SuperNodes on 127.0.0.1, a
user-level DP cohort run. Once the server state of round 2 is saved, the SuperLink's
whole process tree (the ServerApp with it) is killed with SIGKILL; the SuperLink is
started again on the same database, and the run is submitted again with ``resume-from``:
a new Flower run that carries on in the same run folder. The SuperNodes were never
restarted.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest

from common.federation.config import FederatedConfig
from common.privacy.ledger import read_ledger
from deploy.local import CONNECTION, LocalDeployment
from deploy.run import submit_run
from server.resume.state import STATE_FOLDER, STATE_SUMMARY
from simulations.launch import LaunchError
from simulations.process_tree import descendants
from simulations.superlink import flower_env
from tests.helpers import (
    deployment_run_config,
    node_logs,
    processes_naming,
    running,
    stop_serverapp,
)

ROUNDS = 5
RUN = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 10, "dropout": 0.0,
       "num-server-rounds": ROUNDS, "local-epochs": 1, "lr": 0.1, "batch-size": 16,
       "deployment-nodes": 2, "partition-mode": "cohort", "dp": "user",
       "noise-multiplier": 1.0, "clip-norm": 1.0, "fraction-train": 1.0,
       "population": 20}  # fmt: skip
WAIT_SECONDS = 300.0


def saved_round(results: Path) -> int:
    """The round of the run's last saved server state (0 before the first).

    What a resumed run starts from; the metrics row and ledger entry of a round come
    before its state, so waiting on them lets the kill land before the state is saved.
    """
    path = results / STATE_FOLDER / STATE_SUMMARY  # written atomically, after the .pt
    return int(json.loads(path.read_text())["round"]) if path.is_file() else 0


def wait_for_saved_round(
    results: Path, wanted: int, submitted: threading.Thread, deadline: float, poll: float = 0.1
) -> None:
    """Return once the run has saved the server state of round ``wanted``."""
    while saved_round(results) < wanted:
        assert submitted.is_alive(), "the run ended before the kill"
        assert time.monotonic() < deadline, f"round {wanted}'s server state was never saved"
        time.sleep(poll)


@pytest.mark.simulation
def test_a_killed_superlink_and_serverapp_resume_the_run_in_its_folder(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the deployment with a SuperLink database, and the run submitted
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    config = deployment_run_config(cycle_log, tmp_path, RUN)
    FederatedConfig.from_run_config(config)
    results = tmp_path / "results"
    results.mkdir()
    deployment = LocalDeployment(tmp_path / "deployment", node_logs(cycle_log, tmp_path / "nodes"),
                                 env=flower_env(), database=tmp_path / "superlink.db")  # fmt: skip
    first: list[BaseException] = []

    def submit() -> None:
        try:
            submit_run(CONNECTION, config, results, deployment.env, timeout=WAIT_SECONDS)
        except LaunchError as error:  # flwr run ends with its SuperLink
            first.append(error)

    with deployment:
        submitted = threading.Thread(target=submit)
        submitted.start()
        deadline = time.monotonic() + WAIT_SECONDS
        wait_for_saved_round(results, 1, submitted, deadline)  # the ServerApp is up
        assert deployment.superlink is not None
        below = set(descendants(deployment.superlink.pid))  # not another test's ServerApp
        serverapps = [pid for pid in processes_naming("flwr-serverapp") if pid in below]
        wait_for_saved_round(results, 2, submitted, deadline, poll=0.01)
        for pid in serverapps:  # the kill lands mid-run however busy the cores
            stop_serverapp(pid, results)

        # Execute: SIGKILL the SuperLink and the ServerApp, restart, resubmit
        killed = deployment.crash_superlink()
        submitted.join(timeout=120)
        assert not (results / "summary.json").exists(), "the run ended before the kill"
        deployment.restart_superlink()
        summary = submit_run(CONNECTION, {**config, "resume-from": str(results)}, results,
                             deployment.env, timeout=WAIT_SECONDS)  # fmt: skip
        superlink_log = (tmp_path / "deployment" / "superlink.log").read_text()

    # Assert: the ServerApp died with the SuperLink; the run ended in the same folder with
    # every round recorded once and every release in the ledger once
    assert set(serverapps) & set(killed), "the ServerApp was not in the SuperLink's tree"
    assert not any(running(pid) for pid in killed)
    assert first and not submitted.is_alive()
    assert summary["status"] == "completed" and summary["released_round"] == ROUNDS
    (resumed,) = summary["resumed"]
    assert resumed["from_round"] >= 2 and resumed["continued_after"] >= resumed["from_round"]
    with (results / "metrics.csv").open(newline="") as handle:
        rounds = [int(row["round"]) for row in csv.DictReader(handle)]
    lost = range(resumed["from_round"] + 1, resumed["continued_after"] + 1)
    assert rounds == [r for r in range(ROUNDS + 1) if r not in lost]
    entries = read_ledger(results / "ledger" / "server.jsonl")
    assert [entry.round for entry in entries] == list(range(1, ROUNDS + 1))
    assert len({entry.run_id for entry in entries}) == 1
    assert superlink_log.count("Created node_id=") == 2  # the restart kept the nodes
    assert (results / "flwr.1.log").stat().st_size > 0  # the killed submission's log
