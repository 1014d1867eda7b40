"""Stops a launcher's SuperLink and simulation when the launcher dies, even by SIGKILL.

``python -m simulations.watchdog SUPERLINK_PID`` runs in a session of its own with its
standard input a pipe from the launcher. The kernel closes that pipe when the launcher
exits, however it exits, so reading it to the end is waiting for the launcher. A
launcher that ends normally first writes :data:`DONE` (it stops its SuperLink itself);
an end of input without it means the launcher died, and the watchdog then stops the
SuperLink, its process group and every descendant's group (flwr-simulation and Ray run
in a session of their own under the SuperExec), as the launcher would have.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import IO

from simulations.process_tree import stat_fields, stop_process_tree

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


def watch(pid: int, launcher: IO[bytes], timeout: float = 15.0) -> bool:
    """Wait for the launcher's end; stop ``pid``'s tree (SIGKILL after ``timeout``
    seconds) unless the launcher said it was done. Returns whether it stopped anything."""
    started = start_time(pid)
    said = launcher.read()
    if said == DONE or started is None or start_time(pid) != started:
        return False
    logger.warning("the launcher died: stopping its SuperLink (pid %d) and simulation", pid)
    stop_process_tree(pid, timeout)
    return True


def start_watchdog(pid: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the watchdog of SuperLink ``pid``; keep it until :func:`release_watchdog`."""
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.watchdog", str(pid)],
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
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m simulations.watchdog SUPERLINK_PID", file=sys.stderr)
        return 2
    watch(int(args[0]), sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
