"""End to end: a local deployment whose owner is SIGKILLed leaves no process behind,
once it is up and while its SuperLink is still starting."""

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
import deploy.local
from deploy.local import LocalDeployment
if sys.argv[3] == "starting":  # the SuperLink never answers its health check
    def never_healthy(port, context):
        print("starting", flush=True)
        time.sleep(600)
    deploy.local._healthy = never_healthy
deployment = LocalDeployment(Path(sys.argv[1]), [Path(sys.argv[2])])
deployment.__enter__()
print("up", flush=True)
time.sleep(600)
"""


def owner_of_deployment(
    cycle_log: Path, tmp_path: Path, env: dict[str, str], stage: str
) -> subprocess.Popen[bytes]:
    """A process that brings up a deployment of one node, marked by ``env``; returns once
    it reached ``stage`` (``up``, or ``starting``: its SuperLink spawned, not yet healthy)."""
    data = node_logs(cycle_log, tmp_path / "nodes")[0]
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "deployment"), str(data), stage],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert owner.stdout is not None and owner.stdout.readline() == f"{stage}\n".encode()
    return owner


STAGES = {  # stage the owner dies in: the processes of the deployment running by then
    "up": ("flower-superlink", "flower-supernode", "deploy.warm_superexec",
           "simulations.watchdog"),
    "starting": ("flower-superlink", "simulations.watchdog"),
}  # fmt: skip


@pytest.mark.simulation
@pytest.mark.parametrize("stage", STAGES)
def test_a_killed_owner_leaves_no_process_of_its_deployment(
    cycle_log: Path, tmp_path: Path, stage: str
) -> None:
    # Prepare: an owner process with a deployment of one node, up (SuperLink, SuperNode
    # and its warm SuperExec) or still starting (a SuperLink that never answers its
    # health check), every process marked for this test
    env = {**flower_env(), "FLWR_HOME": str(tmp_path / "flwr-home"), MARKER: uuid.uuid4().hex}
    try:
        owner = owner_of_deployment(cycle_log, tmp_path, env, stage)
        parts = simulation_processes(env[MARKER])
        started = " ".join(parts.values())
        for part in STAGES[stage]:
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
