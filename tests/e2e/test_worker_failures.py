"""End to end: a simulation whose Ray worker is killed mid-run stops loudly within a round,
and one whose clients fail on purpose completes with the degradation said out loud.

Flower 1.41's simulation engine keeps a dead Ray actor in its pool and fails every
client later sent to it (``flwr.simulation.ray_transport.ray_actor.BasicActorPool``), so
the run cannot recover by itself: the server stops it instead of going on degraded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from simulations import supervision
from simulations.launch import PROJECT_ROOT
from simulations.superlink import RAY_CPUS_VARIABLE, flower_env
from tests.helpers import BASE, free_port, launch_run, metrics_rows, write_preset

MARKER = "FEDSEQREC_WORKER_TEST"
RUN = {**BASE, "partition-mode": "cross-device", "fraction-train": 1.0, "dp": "none",
       "noise-multiplier": 0.0, "num-server-rounds": 100_000}  # fmt: skip
WAIT_SECONDS = 240.0


@pytest.fixture(autouse=True)
def every_cpu_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faults on two workers need two: Ray's default, not the e2e suite's one."""
    monkeypatch.delenv(RAY_CPUS_VARIABLE, raising=False)


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``MARKER=marker``: their command lines."""
    return supervision.marked_processes(marker, variable=MARKER)


def kill_all(process: subprocess.Popen[bytes], marker: str) -> None:
    """SIGKILL the launcher's group and every process of its simulation, until none is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (alive := marked_processes(marker)) and time.monotonic() < deadline:
        for pid in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    process.wait(timeout=30)


def completed_rounds(results: Path) -> int:
    """The last round in the run's metrics.csv (0 before round 1 finished)."""
    folders = list(results.glob("*/metrics.csv"))
    if not folders:
        return 0
    rows = metrics_rows(folders[0].parent)
    return int(rows[-1]["round"]) if rows else 0


@pytest.mark.simulation
def test_a_killed_worker_stops_the_run_within_one_round_with_a_clear_error(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a run that would go on for hours, two rounds done
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    preset = write_preset(tmp_path / "worker.toml", {"dataset": str(cycle_log), **RUN})
    results, log, marker = tmp_path / "results", tmp_path / "launch.log", uuid.uuid4().hex
    command = [sys.executable, "-m", "simulations.launch", "--preset", str(preset),
               "--results", str(results), "--port", str(free_port())]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env={**flower_env(), MARKER: marker}, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while completed_rounds(results) < 2:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "two rounds never completed"
            time.sleep(0.2)
        # Execute: SIGKILL one Ray client worker, nothing else
        workers = [pid for pid, cmd in marked_processes(marker).items()
                   if "ray::ClientAppActor" in cmd]  # fmt: skip
        assert len(workers) >= 2, "expected two Ray client workers"
        killed_after = completed_rounds(results)
        os.kill(workers[0], signal.SIGKILL)
        process.wait(timeout=WAIT_SECONDS)
    finally:
        kill_all(process, marker)
    # Assert: the launcher failed with the reason, within one round of the kill
    printed = log.read_text(errors="replace")
    assert process.returncode == 1, printed[-2000:]
    (folder,) = results.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("WorkerDiedError: round ")
    assert "simulation worker running node" in summary["error"]
    assert "error: run failed: WorkerDiedError" in printed
    assert "done" not in printed.splitlines()[-1]
    assert completed_rounds(results) - killed_after <= 1
    assert marked_processes(marker) == {}
    # the console: at most 5 lines after the last round's progress line, the last one
    # naming the worker's round and the way on; the details are in the run's log
    lines = printed.strip().splitlines()
    progress = max(
        i for i, line in enumerate(lines) if line.startswith("INFO fedseqrec.server: round")
    )
    assert len(lines) - 1 - progress <= 5, lines[progress:]
    dead_round = completed_rounds(results) + 1
    assert f"WorkerDiedError: round {dead_round}: the simulation worker" in lines[-1]
    assert f"--resume {folder}" in lines[-1]
    assert "Traceback" not in printed and "ray::" not in printed
    assert summary["client_failures"] >= 1  # the dead round's failures stay on the record


@pytest.mark.simulation
def test_failing_clients_degrade_a_run_that_says_so(cycle_log: Path, tmp_path: Path) -> None:
    # Prepare: 30% of the 20 clients raise every round; half the replies are enough
    settings = {"dataset": str(cycle_log), **RUN, "num-server-rounds": 3,
                "fault-rate": 0.3, "fault-kind": "error", "min-replies": 0.5}  # fmt: skip

    # Execute
    folder = launch_run(tmp_path, "faulty", settings)

    # Assert: every round lost 6 clients, counted per round, in the summary and rejections.csv
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["degraded_rounds"], summary["client_failures"]) == (3, 18)
    rows = metrics_rows(folder)[1:]
    assert [(row["clients"], row["failed"]) for row in rows] == [("14.0", "6")] * 3
    reasons = (folder / "rejections.csv").read_text().splitlines()
    assert len(reasons) == 1 + 18
    assert all("injected fault: client error" in line for line in reasons[1:])


@pytest.mark.simulation
def test_hanging_clients_on_two_workers_are_asked_again_without_stalling_later_rounds(
    cycle_log: Path, tmp_path: Path
) -> None:
    # Prepare: one of the 20 clients hangs each round, sleeping past round-timeout, so it
    # holds one of the two Ray workers into the next round; every reply is needed, so a
    # round short of replies asks its failed clients again (injected faults are transient)
    timeout = 30.0
    settings = {"dataset": str(cycle_log), **RUN, "num-server-rounds": 2, "fault-rate": 0.05,
                "fault-kind": "hang", "round-timeout": timeout, "min-replies": 20,
                "round-retries": 2}  # fmt: skip

    # Execute
    folder = launch_run(tmp_path, "hang", settings)

    # Assert: every round ended with all 20 replies after its retries, none stalled for good
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["degraded_rounds"] == 0 and summary["client_failures"] >= 2
    rows = metrics_rows(folder)[1:]
    assert [row["clients"] for row in rows] == ["20.0"] * 2
    assert all(int(row["failed"]) >= 1 for row in rows)  # each round's own hung client
    assert all(float(row["round_seconds"]) < 3 * timeout + 10 for row in rows)
    failures = (folder / "rejections.csv").read_text().splitlines()[1:]
    assert {line.split(",")[0] for line in failures} == {"1", "2"}
    assert all(line.endswith("no reply within the round timeout") for line in failures)
