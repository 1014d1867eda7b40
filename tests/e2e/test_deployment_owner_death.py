"""End to end: a local deployment whose owner is SIGKILLed leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from simulations.launch import PROJECT_ROOT
from simulations.superlink import flower_env
from tests.helpers import MARKER, node_logs, simulation_processes, still_running, survivors

OWNER = """
import sys, time
from pathlib import Path
from deploy.local import LocalDeployment
deployment = LocalDeployment(Path(sys.argv[1]), [Path(sys.argv[2])])
deployment.__enter__()
print("up", flush=True)
time.sleep(600)
"""


@pytest.mark.simulation
def test_a_killed_owner_takes_its_superlink_supernode_and_superexec_down(
    cycle_log: Path, tmp_path: Path
) -> None:
    # Prepare: an owner process holding a deployment of one node (SuperLink, SuperNode
    # and its warm SuperExec), every process marked for this test
    env = {**flower_env(), "FLWR_HOME": str(tmp_path / "flwr-home"), MARKER: uuid.uuid4().hex}
    data = node_logs(cycle_log, tmp_path / "nodes")[0]
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "deployment"), str(data)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"up\n"
        parts = simulation_processes(env[MARKER])
        started = " ".join(parts.values())
        for part in ("flower-superlink", "flower-supernode", "deploy.warm_superexec",
                     "simulations.watchdog"):  # fmt: skip
            assert part in started, part

        # Act: the owner dies without a chance to stop anything
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)

        # Assert: the watchdog stops every process of the deployment
        assert survivors(env[MARKER], within=60.0) == {}
        assert still_running(list(parts), within=30) == []
    finally:
        for pid in simulation_processes(env[MARKER]):  # never leave a failed test's parts
            os.kill(pid, signal.SIGKILL)
