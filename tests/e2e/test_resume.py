"""End to end: a simulation SIGKILLed mid-run, then ``--resume`` in its own folder.

Without DP and with a fixed seed the resumed run ends with the very model of a run that
was never interrupted (FedAdam, so the server optimizer's state must carry over). With
user-level DP it ends with the epsilon of an uninterrupted run, and its ledger holds
each round once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.privacy.accounting import Release, pld_epsilon
from common.privacy.ledger import read_ledger
from server.resume.state import load_server_state
from server.resume.stops import UNRECORDED
from server.run_recorder import CHECKPOINT
from simulations.launch import PROJECT_ROOT, main
from simulations.superlink import flower_env
from tests.helpers import (
    BASE,
    free_port,
    kill_simulation,
    launch_run,
    metrics_rows,
    part_of,
    spawn_launch,
    stop_serverapp,
    write_preset,
)

ROUNDS = 8
KILL_AFTER_ROWS = 3  # rounds 0, 1 and 2 in metrics.csv: the kill lands in round 3 or so
STARTUP_SECONDS = 240.0  # a launch takes about 20 s on 2 idle cores, 60 s on busy ones
COHORTS = {"partition-mode": "cohort", "users-per-client": 10, "fraction-train": 0.5,
           "num-server-rounds": ROUNDS, "seed": 7}  # fmt: skip


def killed_mid_run(tmp_path: Path, name: str, settings: dict[str, object]) -> Path:
    """Launch ``settings``, SIGKILL the whole simulation once metrics.csv has a few rows."""
    preset = write_preset(tmp_path / f"{name}.toml", settings)
    results, log = tmp_path / name, tmp_path / f"{name}.log"
    launch = spawn_launch(["--preset", str(preset), "--port", str(free_port())], results, log,
                          flower_env())  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        serverapp = 0
        while True:
            folders = list(results.glob("*/metrics.csv"))
            if folders and not serverapp:  # the ServerApp is up
                serverapp = part_of(launch, "flwr-simulation")
            if folders and len(metrics_rows(folders[0].parent)) >= KILL_AFTER_ROWS:
                break
            tail = log.read_text(errors="replace")[-2000:]
            assert launch.process.poll() is None, f"the launcher exited early:\n{tail}"
            assert time.monotonic() < deadline, f"fewer than {KILL_AFTER_ROWS} rows:\n{tail}"
            time.sleep(0.01)
        folder = folders[0].parent
        stop_serverapp(serverapp, folder)  # the kill lands mid-run however busy the cores
    finally:
        kill_simulation(launch)
    return folder


def resume(folder: Path) -> dict[str, object]:
    """``python -m simulations.launch --resume FOLDER``; the summary it leaves."""
    assert main(["--resume", str(folder), "--port", str(free_port())]) == 0
    return dict(json.loads((folder / "summary.json").read_text()))


@pytest.mark.simulation
def test_a_resumed_run_without_dp_ends_with_the_uninterrupted_model(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: FedAdam over two cohorts, users sampled by (seed, round); one run whole
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **BASE, **COHORTS, "dp": "none",
                "strategy": "fedadam", "server-lr": 0.05}  # fmt: skip
    whole = launch_run(tmp_path, "whole", settings)
    # Execute: the same run killed mid-run, then resumed
    folder = killed_mid_run(tmp_path, "killed", settings)
    # the state proper: its JSON copy for people is written after it, so a kill in
    # between leaves the JSON a round behind
    saved = {"round": load_server_state(folder).round}
    summary = resume(folder)

    # Assert: the same model, the same rows, nothing lost
    ours = torch.load(folder / CHECKPOINT, weights_only=True)
    theirs = torch.load(whole / CHECKPOINT, weights_only=True)
    assert ours["round"] == theirs["round"] == ROUNDS
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    assert [row["round"] for row in metrics_rows(folder)] == [str(r) for r in range(ROUNDS + 1)]
    for ours_row, theirs_row in zip(metrics_rows(folder), metrics_rows(whole), strict=True):
        assert ours_row["valid_ndcg@10"] == theirs_row["valid_ndcg@10"]
    whole_summary = json.loads((whole / "summary.json").read_text())
    assert summary["released_round"] == whole_summary["released_round"]
    assert summary["test"] == whole_summary["test"]
    assert summary["rounds"] == ROUNDS
    (resumed,) = summary["resumed"]  # type: ignore[misc]
    assert (resumed["from_round"], resumed["continued_after"], resumed["rounds_lost"]) == (
        saved["round"], saved["round"], 0)  # fmt: skip
    # every process was SIGKILLed at once: nobody could record why the run stopped
    assert resumed["stopped_by"] == {"part": "unknown", "cause": UNRECORDED}
    # the state is saved just after a round's metrics row: the kill may land in between
    assert KILL_AFTER_ROWS - 2 <= saved["round"] < ROUNDS
    assert (folder / "flwr.1.log").is_file()  # the killed launch's log is kept


@pytest.mark.simulation
def test_a_resumed_user_dp_run_spends_the_uninterrupted_epsilon_once_per_round(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare / Execute: user-level DP over cohorts, killed mid-run, then resumed
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **BASE, **COHORTS, "dp": "user"}
    folder = killed_mid_run(tmp_path, "killed", settings)
    summary = resume(folder)
    audit = subprocess.run(
        [sys.executable, "-m", "common.privacy.report", str(folder)],
        cwd=PROJECT_ROOT, env=flower_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # Assert: rounds 1..N released once each, in one unbroken ledger of this run
    entries = read_ledger(folder / "ledger" / "server.jsonl")
    assert [entry.round for entry in entries] == list(range(1, ROUNDS + 1))
    assert {entry.run_id for entry in entries} == {folder.name}
    # an uninterrupted run records N identical releases: its final epsilon is this one
    privacy = summary["privacy"]
    assert isinstance(privacy, dict)
    release = Release(privacy["noise_multiplier"], privacy["sampling_rate"], 1)
    uninterrupted = pld_epsilon([release] * ROUNDS, privacy["delta"])
    assert entries[-1].epsilon == pytest.approx(uninterrupted, rel=1e-12)
    assert privacy["epsilon"] == pytest.approx(uninterrupted, rel=1e-12)
    assert privacy["releases_accounted"] == ROUNDS
    # a round released but not saved before the kill counts, and is not trained again
    (resumed,) = summary["resumed"]  # type: ignore[misc]
    rows = [int(row["round"]) for row in metrics_rows(folder)]
    lost = range(resumed["from_round"] + 1, resumed["continued_after"] + 1)
    assert rows == [r for r in range(ROUNDS + 1) if r not in lost]
    assert summary["rounds"] == ROUNDS - resumed["rounds_lost"]
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "PASSED" in audit.stdout
    assert json.loads((folder / "audit.json").read_text())["passed"]
