"""End to end: a DP simulation killed mid-run leaves ledgers that ``fedseqrec-audit`` reads.

The launcher runs in a session of its own, and so do the SuperLink and the SuperExec
(flwr-simulation, with the ServerApp, and the Ray processes run in the SuperExec's), so
no one process group holds the whole simulation. Every process inherits the
environment, though: the launcher gets a unique marker variable, and the simulation is
every live process whose environment carries it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.privacy.ledger import read_ledger
from common.privacy.report import main as audit_main
from simulations.launch import PROJECT_ROOT
from simulations.superlink import flower_env
from tests.helpers import (
    BASE,
    MARKER,
    Launch,
    free_port,
    kill_simulation,
    processes_naming,
    simulation_processes,
    survivors,
    write_preset,
)

STARTUP_SECONDS = 180.0  # a launch takes about 20 s on 2 idle cores, 60 s on busy ones
SETTINGS = {
    "user": {"partition-mode": "cohort", "users-per-client": 10, "fraction-train": 0.5},
    "local": {"partition-mode": "cross-silo", "users-per-client": 10, "fraction-train": 1.0},
}
ROUNDS = 100_000  # still running whenever the test kills it


@contextmanager
def launched(tmp_path: Path, dp: str, dataset: Path) -> Iterator[Launch]:
    """``python -m simulations.launch`` in a session of its own; killed whatever happens."""
    settings = {"dataset": str(dataset), **BASE, **SETTINGS[dp], "dp": dp,
                "num-server-rounds": ROUNDS}  # fmt: skip
    preset = write_preset(tmp_path / f"{dp}-dp.toml", settings)
    results, log, port = tmp_path / "results", tmp_path / "launch.log", free_port()
    env = {**flower_env(), MARKER: uuid.uuid4().hex}
    command = [sys.executable, "-m", "simulations.launch", "--preset", str(preset),
               "--results", str(results), "--port", str(port)]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    launch = Launch(process, env[MARKER], results, log, port)
    try:
        yield launch
    finally:
        kill_simulation(launch)


def ledger_lines(folder: Path) -> int:
    """Newline-terminated lines in a run folder's ledger files."""
    return sum(path.read_bytes().count(b"\n") for path in (folder / "ledger").glob("*.jsonl"))


def wait_for_entries(launch: Launch, count: int) -> Path:
    """Poll until the run's ledgers hold ``count`` lines; the run folder."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        folders = list(launch.results.glob("*/ledger"))
        if folders and ledger_lines(folders[0].parent) >= count:
            return folders[0].parent
        tail = launch.log.read_text(errors="replace")[-2000:]
        assert launch.process.poll() is None, f"the launcher exited early:\n{tail}"
        assert time.monotonic() < deadline, f"fewer than {count} ledger lines:\n{tail}"
        time.sleep(0.1)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every ledger file's bytes and modification time."""
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted((folder / "ledger").iterdir())
    }


def audit(folder: Path, report: Path) -> subprocess.CompletedProcess[str]:
    """``fedseqrec-audit FOLDER --json REPORT`` (as ``python -m common.privacy.report``)."""
    return subprocess.run(
        [sys.executable, "-m", "common.privacy.report", str(folder), "--json", str(report)],
        cwd=PROJECT_ROOT, env=flower_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.simulation
@pytest.mark.parametrize(
    ("dp", "ledger", "entries"), [("user", "server", 2), ("local", "clients", 4)]
)
def test_a_simulation_killed_mid_run_leaves_ledgers_the_audit_confirms(
    dp: str,
    ledger: str,
    entries: int,
    cycle_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: a DP run that would go on for hours, with `entries` releases recorded
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    with launched(tmp_path, dp, cycle_log) as launch:
        folder = wait_for_entries(launch, entries)
        assert launch.process.poll() is None
        # Execute: SIGKILL the launcher, SuperLink, SuperExec, simulation, Ray workers
        killed = kill_simulation(launch)
    ledgers = snapshot(folder)
    first = audit(folder, tmp_path / "audit.json")
    capsys.readouterr()
    second = audit_main([str(folder)]), capsys.readouterr().out  # again, in this process

    # Assert: the whole simulation died abruptly, mid-run, and left nothing behind
    assert launch.process.returncode == -signal.SIGKILL
    commands = " | ".join(killed.values())
    for part in ("simulations.launch", "flwr run", "flower-superlink", "flower-superexec",
                 "flwr-simulation", "raylet", "ray::ClientAppActor"):  # fmt: skip
        assert part in commands
    assert not (folder / "summary.json").exists()
    assert not simulation_processes(launch.marker)
    assert not processes_naming(str(folder), f"127.0.0.1:{launch.port}")
    # every line is a complete record, the last one included
    assert list(ledgers) == [f"{ledger}.jsonl"]
    content = ledgers[f"{ledger}.jsonl"][0]
    assert content.endswith(b"\n")
    records = [json.loads(line) for line in content.splitlines()]
    assert len(records) == ledger_lines(folder) >= entries
    # the audit reads every entry written and confirms every epsilon
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{len(records)} entries from " in first.stdout
    assert "PASSED" in first.stdout and "cut short" not in first.stdout
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["passed"] and report["skipped_lines"] == 0
    assert sum(party["entries"] for party in report["parties"]) == len(records)
    parsed = read_ledger(folder / "ledger" / f"{ledger}.jsonl")
    for party in report["parties"]:  # each party's guarantee is its last recorded epsilon
        rounds = [entry.round for entry in parsed if entry.who == party["who"]]
        assert rounds == list(range(1, len(rounds) + 1))
        last = [entry.epsilon for entry in parsed if entry.who == party["who"]][-1]
        assert party["epsilon"] == pytest.approx(last)
    # auditing again changes nothing and says the same
    assert snapshot(folder) == ledgers
    assert second == (first.returncode, first.stdout)


@pytest.mark.simulation
def test_a_launcher_killed_alone_takes_its_simulation_down_with_it(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a user-level DP run that would go on for hours, two releases recorded
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    with launched(tmp_path, "user", cycle_log) as launch:
        folder = wait_for_entries(launch, 2)
        before = simulation_processes(launch.marker)
        # Execute: SIGKILL the launcher process only; nothing else is signalled
        os.kill(launch.process.pid, signal.SIGKILL)
        launch.process.wait(timeout=30)
        left = survivors(launch.marker, within=60.0)
    # Assert: the watchdog stopped the SuperLink and the whole simulation on its own
    assert any("flwr-simulation" in command for command in before.values())
    (watchdog,) = [command for command in before.values() if "simulations.watchdog" in command]
    assert left == {}, f"still running after the launcher died: {sorted(left.values())}"
    app_copy = Path(watchdog.split()[-1])  # the launcher's temporary copy of the app
    assert app_copy.name.startswith("fedseqrec-app-") and not app_copy.exists()
    lines = ledger_lines(folder)
    time.sleep(1.0)
    assert ledger_lines(folder) == lines >= 2  # nobody writes the ledger any more
    result = audit(folder, tmp_path / "audit.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{lines} entries from " in result.stdout
