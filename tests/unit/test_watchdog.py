"""The launcher's watchdog: it stops the SuperLink's tree only when the launcher died."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.resume.stops import read_stops
from simulations.process_tree import stop_process_group
from simulations.watchdog import DONE, main, start_time, start_watchdog, watch
from tests.helpers import running, start_session_tree, still_running


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """A SuperLink-like tree: root -> child in a session of its own -> stubborn grandchild."""
    root, pids = start_session_tree(tmp_path)
    try:
        yield root, pids
    finally:
        stop_process_group(root, timeout=1.0)


def test_an_end_of_input_without_done_stops_the_whole_tree(
    tree: tuple[subprocess.Popen[bytes], list[int]],
) -> None:
    root, pids = tree
    stopped = watch(root.pid, io.BytesIO(b""), timeout=1.0)  # the launcher died
    assert stopped
    assert still_running(pids) == []


def test_a_launcher_that_said_done_leaves_everything_to_itself(
    tree: tuple[subprocess.Popen[bytes], list[int]],
) -> None:
    root, pids = tree
    stopped = watch(root.pid, io.BytesIO(DONE), timeout=1.0)
    assert not stopped
    assert all(running(pid) for pid in pids)


def test_a_launcher_dead_after_its_superlink_is_still_recorded(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert start_time(gone.pid) is None
    assert watch(gone.pid, io.BytesIO(b""), timeout=1.0, run_dir=tmp_path)
    (stop,) = read_stops(tmp_path)
    assert stop["part"] == "launcher" and stop["cause"].startswith("the launcher (pid ")


@pytest.mark.parametrize(("said", "removed"), [(b"", True), (DONE, False)])
def test_the_app_copy_goes_only_when_the_launcher_died(
    tmp_path: Path, said: bytes, removed: bool
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    app = tmp_path / "fedseqrec-app-x"
    (app / "server").mkdir(parents=True)
    (app / "server" / "server_app.py").write_text("app = None\n")
    watch(gone.pid, io.BytesIO(said), timeout=1.0, run_dir=tmp_path, app_dir=app)
    assert app.exists() is not removed  # a launcher that said done removes it itself


def test_an_app_copy_without_a_run_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="an app_dir needs a run_dir"):
        start_watchdog(os.getpid(), dict(os.environ), app_dir=tmp_path)


def test_the_command_line_wants_one_pid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["not-a-pid"]) == 2
    assert "usage: python -m simulations.watchdog SUPERLINK_PID" in capsys.readouterr().err
