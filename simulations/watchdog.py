"""Stops a launcher's SuperLink and simulation when the launcher dies, even by SIGKILL.

The owner of a local deployment (:class:`deploy.local.LocalDeployment`) starts one too:
its SuperLink, SuperNodes and their apps carry its marker.

``python -m simulations.watchdog SUPERLINK_PID [RUN_DIR]`` runs in a session of its own
with its standard input a pipe from the launcher. The kernel closes that pipe when the launcher
exits, however it exits, so reading it to the end is waiting for the launcher. A
launcher that ends normally first writes :data:`DONE` (it stops its SuperLink itself);
an end of input without it means the launcher died, and the watchdog then stops the
SuperLink, its process group and every descendant's group (flwr-simulation and Ray run
in a session of their own under the SuperExec), and every other process of the launch
(:data:`simulations.supervision.RUN_MARKER`), as the launcher would have; it records in
``RUN_DIR/stops.jsonl`` that the launcher died, for the next ``--resume`` to report.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from server.resume.stops import record_stop
from simulations.process_tree import stat_fields, stop_process_tree
from simulations.supervision import RUN_MARKER, stop_marked

DONE = b"done\n"

logger = logging.getLogger("fedseqrec.watchdog")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks after boot), None if it is gone.

    Together with the pid it names one process: a pid reused later starts later.
    """
    try:
        return int(stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def watch(
    pid: int, launcher: IO[bytes], timeout: float = 15.0, run_dir: Path | None = None
) -> bool:
    """Wait for the launcher's end; stop ``pid``'s tree (SIGKILL after ``timeout``
    seconds) and the rest of the launch unless the launcher said it was done. Returns
    whether it stopped anything."""
    started = start_time(pid)
    launcher_pid = os.getppid()
    said = launcher.read()
    if said == DONE:
        return False
    logger.warning("the launcher died: stopping its SuperLink (pid %d) and simulation", pid)
    if run_dir is not None:
        record_stop(run_dir, "launcher", f"the launcher (pid {launcher_pid}) died")
    if started is not None and start_time(pid) == started:
        stop_process_tree(pid, timeout)
    marker = os.environ.get(RUN_MARKER)
    if marker:
        stop_marked(marker, timeout=timeout)
    return True


def start_watchdog(
    pid: int, env: dict[str, str], run_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the watchdog of SuperLink ``pid``; keep it until :func:`release_watchdog`."""
    folder = [str(run_dir)] if run_dir is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.watchdog", str(pid), *folder],
        stdin=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip


def release_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    """Tell the watchdog the launcher stopped its SuperLink itself, and let it exit."""
    if watchdog.stdin is not None and not watchdog.stdin.closed:
        try:
            watchdog.stdin.write(DONE)
            watchdog.stdin.close()
        except BrokenPipeError:  # the watchdog is gone already
            pass
    watchdog.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``SUPERLINK_PID`` on the command line, the launcher's pipe on stdin."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or not args[0].isdigit():
        print("usage: python -m simulations.watchdog SUPERLINK_PID [RUN_DIR]", file=sys.stderr)
        return 2
    watch(int(args[0]), sys.stdin.buffer, run_dir=Path(args[1]) if len(args) == 2 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
