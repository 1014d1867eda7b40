"""Every part of a launched simulation lives and dies together, and the launcher says which died.

A launch runs several processes in sessions of their own: the local SuperLink, Flower's
SuperExec, ``flwr-simulation`` (the ServerApp) and Ray's workers. A part killed alone
used to leave the rest running: a killed SuperLink left the ServerApp finishing the run
while a ``--resume`` started a second one on the same folder. Now:

- every process of a launch inherits :data:`RUN_MARKER` in its environment, so the
  launcher (and its watchdog, if the launcher dies) finds them all, however Flower and
  Ray reparent them (:func:`marked_processes`, :func:`stop_marked`);
- :class:`RunSupervisor` watches the SuperLink and the ServerApp while ``flwr run``
  streams; when one dies it records which and how, and ends ``flwr run``, after which
  the launcher stops everything left and prints one line naming the part.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from simulations.process_tree import process_table

RUN_MARKER = "FEDSEQREC_RUN"  # environment variable every process of one launch carries
SERVERAPP_COMMAND = "flwr-simulation"  # the process that runs the ServerApp and drives Ray
POLL_SECONDS = 0.5
SETTLE_SECONDS = 1.5  # how long a stopped launch must show no process before it counts as gone


@dataclass(frozen=True)
class PartDeath:
    """A part of the simulation that died on its own: which process and how."""

    part: str  # "SuperLink" or "ServerApp"
    pid: int
    how: str  # "was killed by SIGKILL", "exited with code 1", ...

    def __str__(self) -> str:
        return f"the {self.part} (pid {self.pid}) {self.how}"


def marked_processes(
    marker: str, exclude: tuple[int, ...] = (), variable: str = RUN_MARKER
) -> dict[int, str]:
    """Live processes whose environment carries ``variable=marker`` (by default a launch's
    :data:`RUN_MARKER`): their command lines."""
    wanted = f"{variable}={marker}".encode()
    found = {}
    for pid, (_, _, state) in process_table().items():
        if state in ("Z", "X") or pid == os.getpid() or pid in exclude:
            continue
        try:
            if wanted not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone, or not ours to read
            continue
        found[pid] = command.decode(errors="replace").strip()
    return found


def stop_marked(
    marker: str,
    exclude: tuple[int, ...] = (),
    timeout: float = 10.0,
    variable: str = RUN_MARKER,
    settle: float = SETTLE_SECONDS,
) -> list[str]:
    """SIGTERM every process marked ``variable=marker`` (by default: of the launch), SIGKILL
    what is left after ``timeout`` seconds; the command lines it stopped.

    It returns only once no marked process has been seen for ``settle`` seconds (or
    ``timeout`` more seconds have passed after the SIGKILL): a part that was starting up
    as the stop began (Ray starts its agents a moment after its raylet) appears after the
    first scan, and is signalled like the rest instead of outliving the run.
    """
    stopped: dict[int, str] = {}
    started = time.monotonic()
    quiet_since: float | None = None
    while True:
        alive = marked_processes(marker, exclude, variable)
        now = time.monotonic()
        if not alive:
            quiet_since = now if quiet_since is None else quiet_since
            if now - quiet_since >= settle:
                break
        else:
            quiet_since = None
            if now - started >= 2 * timeout:
                break
            newcomers = {pid: c for pid, c in alive.items() if pid not in stopped}
            _signal(newcomers, signal.SIGTERM)
            stopped.update(newcomers)
            if now - started >= timeout:
                _signal(alive, signal.SIGKILL)
        time.sleep(0.1)
    return list(dict.fromkeys(stopped.values()))


def _signal(pids: dict[int, str], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


def exit_description(code: int) -> str:
    """``was killed by SIGKILL`` for -9, ``exited with code 1`` for 1."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class RunSupervisor:
    """Watches one launch's SuperLink and ServerApp; ends ``flwr run`` when one dies.

    ``summary`` is the run's ``summary.json``: a ServerApp that ends after writing it
    (completed or failed, saying why) did not die.
    """

    def __init__(self, superlink: subprocess.Popen[bytes], marker: str, summary: Path) -> None:
        self.superlink = superlink
        self.marker = marker
        self.summary = summary
        self.started = time.time()
        self.death: PartDeath | None = None
        self._serverapp = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, flwr_run: subprocess.Popen[str]) -> None:
        """Start watching in a thread, for as long as ``flwr_run`` runs."""
        self._thread = threading.Thread(target=self._loop, args=(flwr_run,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (``flwr run`` ended)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self, flwr_run: subprocess.Popen[str]) -> None:
        while not self._done.wait(POLL_SECONDS) and flwr_run.poll() is None:
            self.death = self.check()
            if self.death is not None:
                flwr_run.terminate()  # the stream ends; the launcher stops the rest
                return

    def check(self) -> PartDeath | None:
        """The part that died since the launch started, if one did."""
        code = self.superlink.poll()
        if code is not None:
            return PartDeath("SuperLink", self.superlink.pid, exit_description(code))
        if not self._serverapp:
            found = [
                pid
                for pid, command in marked_processes(self.marker).items()
                if SERVERAPP_COMMAND in command
            ]
            self._serverapp = min(found, default=0)
            return None
        state = process_table().get(self._serverapp, (0, 0, "X"))[2]
        if state in ("Z", "X") and not self._summary_written():
            return PartDeath("ServerApp", self._serverapp, "ended without finishing the run")
        return None

    def _summary_written(self) -> bool:
        """Whether the ServerApp wrote ``summary.json`` during this launch."""
        try:
            return self.summary.stat().st_mtime >= self.started - 1.0
        except OSError:
            return False
