"""End to end: a part of a simulation killed alone takes the whole run down, and it resumes.

A user-level DP run; after two rounds one part is SIGKILLed (the SuperLink, or the
ServerApp's ``flwr-simulation``). The launcher must stop every other process of the run
within seconds, exit 1 with one line naming the part and the way on, and record why; a
``--resume`` then completes the run with each round once in metrics and ledger and the
cause of the stop in ``summary.json``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from common.privacy.ledger import read_ledger
from simulations.launch import main
from simulations.superlink import flower_env
from tests.helpers import (
    BASE,
    Launch,
    free_port,
    kill_simulation,
    metrics_rows,
    part_of,
    spawn_launch,
    stop_serverapp,
    survivors,
    write_preset,
)

ROUNDS = 5
RUN = {**BASE, "partition-mode": "cohort", "users-per-client": 10, "fraction-train": 0.5,
       "dp": "user", "num-server-rounds": ROUNDS, "seed": 3}  # fmt: skip
WAIT_SECONDS = 240.0  # a launch takes about 20 s on 2 idle cores, 60 s on busy ones
GONE_SECONDS = 30.0  # every process of the run stopped within this after the kill (busy cores)


def saved_round(results: Path) -> int:
    """The round of the run's last saved state (-1 before one was saved)."""
    states = list(results.glob("*/state/server_state.json"))
    return int(json.loads(states[0].read_text())["round"]) if states else -1


def wait_for_saved_round(
    results: Path, wanted: int, launch: Launch, log: Path, deadline: float, poll: float = 0.1
) -> None:
    """Return once the run has saved the state of round ``wanted``; fail if it ends first."""
    while saved_round(results) < wanted:
        assert launch.process.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, f"round {wanted} was never saved"
        time.sleep(poll)


@pytest.mark.simulation
@pytest.mark.parametrize(("part", "command"), [("SuperLink", "flower-superlink"),
                                               ("ServerApp", "flwr-simulation")])  # fmt: skip
def test_a_part_killed_alone_stops_the_run_which_then_resumes(
    part: str, command: str, cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a DP run with rounds 0-2 done
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    preset = write_preset(tmp_path / "run.toml", {"dataset": str(cycle_log), **RUN})
    results, log = tmp_path / "results", tmp_path / "launch.log"
    launch = spawn_launch(["--preset", str(preset), "--port", str(free_port())], results, log,
                          flower_env())  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        wait_for_saved_round(results, 0, launch, log, deadline)  # the ServerApp is up
        serverapp, target = part_of(launch, "flwr-simulation"), part_of(launch, command)
        wait_for_saved_round(results, 2, launch, log, deadline, poll=0.01)
        (folder,) = results.iterdir()
        stop_serverapp(serverapp, folder)  # the kill lands mid-run however busy the cores

        # Execute: SIGKILL that one process; the ServerApp, if it lives, goes on
        os.kill(target, signal.SIGKILL)
        killed_at = time.monotonic()
        if target != serverapp:
            os.kill(serverapp, signal.SIGCONT)
        launch.process.wait(timeout=WAIT_SECONDS)
        left = survivors(launch.marker, within=killed_at + 60 - time.monotonic())
        gone_after = time.monotonic() - killed_at
    finally:
        kill_simulation(launch)

    # Assert: everything stopped within seconds; one line says which part and what to do
    assert left == {} and gone_after < GONE_SECONDS, (gone_after, left)
    assert launch.process.returncode == 1
    last = log.read_text(errors="replace").strip().splitlines()[-1]
    assert last.startswith(f"error: the {part} (pid {target}) ")
    assert f"--resume {folder}" in last
    # a ServerApp that lost its SuperLink may have recorded the failure before it was stopped
    early = folder / "summary.json"
    assert not early.exists() or json.loads(early.read_text())["status"] == "failed"

    # Execute: resume
    assert main(["--resume", str(folder), "--port", str(free_port())]) == 0

    # Assert: every round once in metrics and ledger, the stop on the record
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    (resumed,) = summary["resumed"]
    assert resumed["stopped_by"]["part"] == part
    assert f"the {part} (pid {target})" in resumed["stopped_by"]["cause"]
    rounds = [int(row["round"]) for row in metrics_rows(folder)]
    lost = resumed["rounds_lost"]
    assert sorted(rounds) == rounds and len(set(rounds)) == len(rounds)
    assert set(rounds) | set(range(resumed["from_round"] + 1, resumed["continued_after"] + 1)) \
        == set(range(ROUNDS + 1)) and lost in (0, 1)  # fmt: skip
    ledger = [entry.round for entry in read_ledger(folder / "ledger" / "server.jsonl")]
    assert ledger == list(range(1, ROUNDS + 1))
    assert json.loads((folder / "audit.json").read_text())["passed"]
