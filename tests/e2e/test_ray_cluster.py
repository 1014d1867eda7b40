"""End to end: a simulation on a two-node Ray cluster equals a one-node run.

Two Ray nodes of one CPU each are started on 127.0.0.1 the way a user starts a cluster
(``ray start --head``, then ``ray start --address``); the launcher's ``--ray-address``
sends the simulation's clients there. The run must end in the same model, bit for bit,
as a one-node run of the same seed without DP, and client actors must have run on both
nodes. That is also the check that a seed reproduces a cross-silo run: the two nodes'
replies arrive in any order, and the server aggregates them in one order of their own
(``server/reply_order.py``). The nodes are stopped by the marker in their environment,
never with ``ray stop`` (which stops every Ray on the machine, other tests' too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from simulations.supervision import marked_processes, stop_marked
from tests.helpers import free_port, launch_run, metrics_rows, still_running

RAY = str(Path(sys.executable).with_name("ray"))  # this interpreter's Ray
NODE_VARIABLE = "FEDSEQREC_RAY_TEST_NODE"  # each node's processes carry their node's value
NODES = ("head", "worker")
ROUNDS = 2
# 10 cross-silo clients of 2 users, fixed seed, no DP: deterministic wherever clients run
RUN = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 20, "dropout": 0.2,
       "partition-mode": "cross-silo", "users-per-client": 2, "fraction-train": 1.0,
       "num-server-rounds": ROUNDS, "local-epochs": 1, "optimizer": "adam", "lr": 0.01,
       "batch-size": 8, "strategy": "fedavg", "dp": "none", "seed": 42}  # fmt: skip
START_SECONDS = 120.0  # `ray start` takes a few seconds on idle cores, more on busy ones


def node_flags() -> list[str]:
    """One CPU, a small object store, and ports of its own (two nodes share the host)."""
    ports = {name: free_port() for name in ("node-manager", "object-manager",
             "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent",
             "metrics-export")}  # fmt: skip
    return ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
            *(f"--{name}-port={port}" for name, port in ports.items())]  # fmt: skip


def start_node(tag: str, node: str, temp_dir: str, arguments: list[str]) -> None:
    """``ray start ARGUMENTS`` with the node's marker; returns once the node runs.

    ``temp_dir`` is the cluster's own: ``ray start`` records the cluster it started in
    ``<temp dir>/ray_current_cluster``, which in the default /tmp/ray any later plain
    ``ray.init()`` on this machine would try to join (the launcher's do not: they say
    ``RAY_ADDRESS=local``)."""
    env = {**os.environ, NODE_VARIABLE: f"{tag}-{node}", "RAY_DEDUP_LOGS": "0"}
    arguments = [*arguments, f"--temp-dir={temp_dir}"]
    done = subprocess.run([RAY, "start", *arguments, *node_flags()], env=env,
                          capture_output=True, text=True, timeout=START_SECONDS)  # fmt: skip
    assert done.returncode == 0, f"ray start ({node}) failed:\n{done.stdout}\n{done.stderr}"


def stop_nodes(tag: str) -> None:
    """Stop both nodes' processes (SIGTERM, then SIGKILL) and wait until all have exited."""
    pids = [pid for node in NODES for pid in marked_processes(f"{tag}-{node}", (), NODE_VARIABLE)]
    for node in NODES:
        stop_marked(f"{tag}-{node}", timeout=10.0, variable=NODE_VARIABLE)
    alive = still_running(pids, within=30.0)
    assert not alive, f"Ray processes survive SIGKILL: {sorted(alive)}"


@contextmanager
def ray_cluster() -> Iterator[tuple[str, str]]:
    """A head and a worker node on 127.0.0.1; yields (their marker tag, head address)."""
    tag, port = uuid.uuid4().hex, free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's sockets live here
    try:
        start_node(tag, "head", temp_dir, ["--head", f"--port={port}",
                   "--node-ip-address=127.0.0.1", "--include-dashboard=false"])  # fmt: skip
        start_node(tag, "worker", temp_dir, [f"--address=127.0.0.1:{port}",
                                             "--node-ip-address=127.0.0.1"])  # fmt: skip
        yield tag, f"127.0.0.1:{port}"
    finally:
        stop_nodes(tag)
        shutil.rmtree(temp_dir, ignore_errors=True)


class ActorWatch:
    """Records on which nodes a client actor (``ray::ClientAppActor``) process ran."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.nodes: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ActorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._done.wait(0.2):
            for node in NODES:
                commands = marked_processes(f"{self.tag}-{node}", (), NODE_VARIABLE).values()
                if any("ClientAppActor" in command for command in commands):
                    self.nodes.add(node)


@pytest.mark.simulation
def test_a_run_on_a_two_node_ray_cluster_equals_a_one_node_run(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the one-node run, and a cluster of two one-CPU nodes
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **RUN}
    alone = launch_run(tmp_path, "one-node", settings)
    # Execute: the same run with its clients on the cluster
    with ray_cluster() as (tag, address), ActorWatch(tag) as watch:
        clustered = launch_run(tmp_path, "cluster", settings, ("--ray-address", address))

    # Assert: clients ran on both nodes; the same model and metrics as the one-node run
    assert watch.nodes == set(NODES), watch.nodes
    ours, theirs = (
        torch.load(run / "checkpoint.pt", weights_only=True) for run in (clustered, alone)
    )
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    rows = [[(r["round"], r["train_loss"], r["valid_ndcg@10"]) for r in metrics_rows(run)]
            for run in (clustered, alone)]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == ROUNDS + 1
    summaries = [json.loads((run / "summary.json").read_text()) for run in (clustered, alone)]
    assert summaries[0]["test"] == summaries[1]["test"]
