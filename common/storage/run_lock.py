"""One writer per run folder: an exclusive lock held for a process's whole life.

A run folder has two kinds of writer, each with its own lock file (``filelock``, an
``flock`` the kernel drops when the holder dies, however it dies):

- ``launcher.lock``: the launcher (``python -m simulations.launch``, ``deploy.run``),
  which writes the config, the logs, the plots and the audit;
- ``server.lock``: the ServerApp, which writes the rounds, the ledger and the state.

Beside each lock, ``<name>.json`` says who holds it (pid, host, command, since when), so
that a refused writer can name the holder. A second launcher, or a second ServerApp, on
the same folder is refused with :class:`RunFolderBusy`; a resume checks both locks before
any process starts (:func:`check_unlocked`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

LAUNCHER_LOCK = "launcher.lock"
SERVER_LOCK = "server.lock"
LOCK_FILES = (LAUNCHER_LOCK, SERVER_LOCK)
EXIT_GRACE = 5.0  # seconds a resume waits for a lock whose holder may be exiting (killed)


class RunFolderBusy(RuntimeError):
    """Another process holds a run folder's lock; the message names it."""


class RunFolderLock:
    """Hold ``folder/name`` exclusively (``with`` block or :meth:`acquire`/:meth:`release`)."""

    def __init__(self, folder: Path, name: str, role: str, wait: float = 0.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.role = role
        self._lock = FileLock(str(self.path), timeout=wait)

    @property
    def holder_path(self) -> Path:
        """The JSON file that names the holder."""
        return self.path.with_name(f"{self.path.name}.json")

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`RunFolderBusy` naming its holder."""
        try:
            self._lock.acquire()
        except Timeout:
            raise RunFolderBusy(busy_message(self.path)) from None
        holder = {
            "role": self.role,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.holder_path.write_text(json.dumps(holder, sort_keys=True) + "\n")

    def release(self) -> None:
        """Let go of the lock (the holder file stays: it names the last holder)."""
        self._lock.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return bool(self._lock.is_locked)

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def busy_message(path: Path) -> str:
    """``<folder> is being written by <role> pid N on HOST since T (COMMAND)``."""
    holder_path = path.with_name(f"{path.name}.json")
    try:
        holder = json.loads(holder_path.read_text())
        who = (
            f"{holder['role']} pid {holder['pid']} on {holder['host']} since "
            f"{holder['since']} ({holder['command']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process (it has not said who yet)"
    return (
        f"{path.parent} is being written by {who}: one writer per run folder; wait for it "
        f"to end or stop it first ({path.name} is held)"
    )


def check_unlocked(folder: Path, names: tuple[str, ...] = LOCK_FILES, wait: float = 0.0) -> None:
    """Raise :class:`RunFolderBusy` if a writer holds one of ``folder``'s locks ``names``
    (still, after ``wait`` seconds: a writer killed a moment ago lets go as it exits)."""
    for name in names:
        path = Path(folder) / name
        if not path.exists():
            continue
        probe = FileLock(str(path), timeout=wait)
        try:
            probe.acquire()
        except Timeout:
            raise RunFolderBusy(busy_message(path)) from None
        probe.release()
