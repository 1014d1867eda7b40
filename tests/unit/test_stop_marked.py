"""stop_marked: a launch's processes are stopped, including one that appears late or
retitles itself."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from simulations import supervision
from simulations.superlink import simulation_env
from simulations.supervision import RUN_MARKER, marked_processes, stop_marked

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_a_process_that_appears_after_an_empty_scan_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray starts its agents a moment after its raylet: the first scans may find nothing."""
    late = subprocess.Popen(SLEEPER)
    scans = iter([{}, {}])  # two empty scans, then the late process while it lives

    def scan(*_: object) -> dict[int, str]:
        found = next(scans, None)
        if found is not None:
            return found
        return {late.pid: "ray::DashboardAgent"} if late.poll() is None else {}

    monkeypatch.setattr(supervision, "marked_processes", scan)
    try:
        stopped = stop_marked("run", timeout=30.0, settle=1.0)
        assert late.wait(timeout=30) == -signal.SIGTERM
        assert stopped == ["ray::DashboardAgent"]
    finally:
        late.kill()
        late.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    monkeypatch.setattr(
        supervision,
        "marked_processes",
        lambda *_: {stubborn.pid: "stubborn"} if stubborn.poll() is None else {},
    )
    try:
        assert stop_marked("run", timeout=0.5, settle=0.2) == ["stubborn"]
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


TITLED = [
    sys.executable,
    "-c",
    "import time; from ray._raylet import setproctitle; "
    "setproctitle('ray::DashboardAgent' + ' ' * 400); print('ready', flush=True); "
    "time.sleep(120)",
]


@pytest.mark.parametrize("readable", [True, False])
def test_a_process_that_retitles_itself_as_ray_does_keeps_its_marker(readable: bool) -> None:
    """Ray titles its agents with setproctitle, which overwrites the environment block that
    ``marked_processes`` reads unless ``SPT_NOENV`` is set; the launch's environment sets it
    (without it, the case ``readable=False``, the agent is invisible to the launcher)."""
    env = simulation_env()
    if not readable:
        del env["SPT_NOENV"]
    titled = subprocess.Popen(TITLED, env=env, stdout=subprocess.PIPE)
    try:
        assert titled.stdout is not None and titled.stdout.readline() == b"ready\n"
        found = marked_processes(env[RUN_MARKER])
        assert (titled.pid in found) is readable, found
        if readable:
            assert found[titled.pid].startswith("ray::DashboardAgent")
    finally:
        titled.kill()
        titled.wait()
