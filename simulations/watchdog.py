"""Stops a launcher's SuperLink and simulation when the launcher dies, even by SIGKILL.

The owner of a local deployment (:class:`deploy.local.LocalDeployment`) starts one too:
its SuperLink, SuperNodes and their apps carry its marker.

``python -m simulations.watchdog SUPERLINK_PID [RUN_DIR [APP_DIR]]`` runs in a session of its own
with its standard input a pipe from the launcher. The kernel closes that pipe when the launcher
exits, however it exits, so reading it to the end is waiting for the launcher. A
launcher that ends normally first writes :data:`DONE` (it stops its SuperLink itself);
an end of input without it means the launcher died, and the watchdog then stops the
SuperLink, its process group and every descendant's group (flwr-simulation and Ray run
in a session of their own under the SuperExec), and every other process of the launch
(:data:`simulations.supervision.RUN_MARKER`), as the launcher would have; it records in
``RUN_DIR/stops.jsonl`` that the launcher died, for the next ``--resume`` to report, and
removes ``APP_DIR``, the launcher's temporary copy of the app
(:func:`simulations.app_files.staged_app`), which the launcher's own exit would have removed.
"""

from __future__ import annotations

import logging
import os
import shutil
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
    pid: int,
    launcher: IO[bytes],
    timeout: float = 15.0,
    run_dir: Path | None = None,
    app_dir: Path | None = None,
) -> bool:
    """Wait for the launcher's end; stop ``pid``'s tree (SIGKILL after ``timeout``
    seconds) and the rest of the launch, and remove ``app_dir``, unless the launcher said
    it was done. Returns whether it stopped anything."""
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
    if app_dir is not None:  # after the stop: nothing reads it any more
        shutil.rmtree(app_dir, ignore_errors=True)
    return True


def start_watchdog(
    pid: int, env: dict[str, str], run_dir: Path | None = None, app_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the watchdog of SuperLink ``pid``; keep it until :func:`release_watchdog`.
    An ``app_dir`` goes with a ``run_dir``: the command line takes them in that order."""
    if app_dir is not None and run_dir is None:
        raise ValueError("an app_dir needs a run_dir (the watchdog would take it for one)")
    folders = [str(path) for path in (run_dir, app_dir) if path is not None]
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.watchdog", str(pid), *folders],
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
    if len(args) not in (1, 2, 3) or not args[0].isdigit():
        print(
            "usage: python -m simulations.watchdog SUPERLINK_PID [RUN_DIR [APP_DIR]]",
            file=sys.stderr,
        )
        return 2
    folders = [Path(arg) for arg in args[1:]]
    run_dir = folders[0] if folders else None
    app_dir = folders[1] if len(folders) == 2 else None
    watch(int(args[0]), sys.stdin.buffer, run_dir=run_dir, app_dir=app_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
