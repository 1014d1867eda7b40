"""`flwr run .`, the Flower quickstart's command, runs the default app and writes its results.

As a user would: the virtualenv's bin first on PATH, a fresh ``FLWR_HOME`` (the Makefile
sets ``<project>/.flwr``), Flower's own default connection (a managed local SuperLink)
and default simulation federation (2 SuperNodes); only a tiny preset via --run-config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.process_tree import process_table, stop_process_tree
from tests.helpers import PROJECT_ROOT, TINY_USERS, free_port, metrics_rows

ROUNDS = 2
TINY_PRESET = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 10,
               "num-server-rounds": ROUNDS, "users-per-client": TINY_USERS // 2}  # fmt: skip
RESULTS_SECONDS = 300.0


def local_superlinks(port: int) -> list[int]:
    """Pids of the managed local SuperLinks serving ``port`` (the one this test started)."""
    found = []
    for pid in process_table():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flower-superlink") for a in args) and str(port).encode() in args:
            found.append(pid)
    return found


def wait_for(path: Path, seconds: float) -> None:
    """Poll until ``path`` exists; the run goes on in the background after `flwr run`."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not written within {seconds:.0f}s"
        time.sleep(1.0)


@pytest.mark.simulation
def test_flwr_run_dot_writes_the_run_folder_under_flwr_home(
    cycle_log: Path, tmp_path: Path
) -> None:
    flwr_home, http_port = tmp_path / ".flwr", free_port()
    preset = tmp_path / "tiny.toml"
    lines = [f"{key} = {json.dumps(value)}" for key, value in TINY_PRESET.items()]
    preset.write_text("\n".join([f"dataset = {json.dumps(str(cycle_log))}", *lines]) + "\n")
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "FLWR_HOME": str(flwr_home),
        # Flower's own knobs for its managed local SuperLink: ports of this test alone
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    try:
        done = subprocess.run(
            ["flwr", "run", ".", "--run-config", str(preset)],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        started = re.search(r"Successfully started run (\d+)", done.stdout)
        assert started, done.stdout
        folder = flwr_home / "results" / f"run-{started.group(1)}"
        wait_for(folder / "summary.json", RESULTS_SECONDS)
    finally:
        for pid in local_superlinks(http_port):
            stop_process_tree(pid)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["results-dir"] == str(folder)
    assert 0.0 <= summary["test"]["hr@10"] <= 1.0
    assert [row["round"] for row in metrics_rows(folder)] == [str(r) for r in range(ROUNDS + 1)]
    assert (folder / "best_checkpoint.pt").is_file()
