"""A resume refuses, before any process starts, what it cannot account for; one writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from common.storage.run_lock import LAUNCHER_LOCK, SERVER_LOCK, RunFolderBusy, RunFolderLock
from server.resume.preflight import resumed_run
from simulations import launch
from tests.helpers import killed_dp_run, resumable_config

SERVER_LEDGER = Path("ledger") / "server.jsonl"


@pytest.fixture
def folder(cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user-level DP run killed after round 3 was saved, as the launcher left it; no
    simulation may start in these tests."""
    run = tmp_path / "run"
    killed_dp_run(cycle_log, run, saved=3, released=3)
    settings = resumable_config(cycle_log, run).to_run_config()
    (run / "config.json").write_text(json.dumps({"preset": "tiny", "run_config": settings}))

    def no_simulation(*args: object) -> None:
        raise AssertionError("a simulation was started")

    monkeypatch.setattr(launch, "run_simulation", no_simulation)
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run folder (locks aside) and its bytes."""
    return {
        str(path.relative_to(run)): path.read_bytes()
        for path in sorted(run.rglob("*"))
        if path.is_file() and not path.name.startswith(("launcher.lock", "server.lock"))
    }


def refused(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``--resume run``: exit 2 with one error line, the folder unchanged; that line."""
    before = snapshot(run)
    assert launch.main(["--resume", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume: ")
    assert snapshot(run) == before
    return lines[0]


def test_a_consistent_folder_is_resumable(folder: Path) -> None:
    run, label, config = resumed_run(folder)
    assert (run, label, config["resume-from"]) == (folder, "tiny", str(folder))


def test_a_deleted_ledger_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / SERVER_LEDGER).unlink()
    line = refused(folder, capsys)
    assert f"{folder / SERVER_LEDGER} is missing, but the saved state (round 3) records 3" in line


def test_a_ledger_that_is_not_json_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / SERVER_LEDGER).write_text("this is not a ledger\n")
    assert "server.jsonl, line 1" in refused(folder, capsys)


def test_a_ledger_that_lost_its_last_entry_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (folder / SERVER_LEDGER).read_bytes().splitlines(keepends=True)
    (folder / SERVER_LEDGER).write_bytes(b"".join(lines[:-1]))
    line = refused(folder, capsys)
    assert "records 3 entries in server.jsonl, but it holds 2: entries were removed" in line


def test_a_ledger_with_a_rewritten_epsilon_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (folder / SERVER_LEDGER).read_text().splitlines()
    first = json.loads(lines[0])
    first["epsilon"] = first["epsilon"] / 2
    (folder / SERVER_LEDGER).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert "line 2: entry 2 does not chain to entry 1" in refused(folder, capsys)


def test_a_saved_checkpoint_of_nan_weights_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = folder / "state" / "model-round-3.pt"
    saved = torch.load(path, weights_only=True)
    name = next(iter(saved["state_dict"]))
    saved["state_dict"][name] = torch.full_like(saved["state_dict"][name], float("nan"))
    os.unlink(path)  # a hard link to checkpoint.pt: replace it, not write through it
    torch.save(saved, path)
    assert "the saved state names a bad checkpoint" in refused(folder, capsys)


def test_a_second_launcher_is_refused_naming_the_first(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunFolderLock(folder, LAUNCHER_LOCK, "launcher"):
        line = refused(folder, capsys)
    assert f"is being written by launcher pid {os.getpid()} on " in line
    assert "one writer per run folder" in line


def test_a_serverapp_still_writing_the_folder_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunFolderLock(folder, SERVER_LOCK, "ServerApp"):
        assert f"by ServerApp pid {os.getpid()}" in refused(folder, capsys)


def test_a_lock_is_free_again_once_its_holder_lets_go(folder: Path) -> None:
    first = RunFolderLock(folder, SERVER_LOCK, "ServerApp")
    first.acquire()
    with pytest.raises(RunFolderBusy, match="ServerApp pid"):
        RunFolderLock(folder, SERVER_LOCK, "ServerApp").acquire()
    first.release()
    with RunFolderLock(folder, SERVER_LOCK, "ServerApp") as second:
        assert second.held
