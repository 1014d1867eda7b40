"""Stopping a process tree that spans several sessions, from Linux's /proc.

Flower's SuperExec starts a session of its own, and flwr-simulation (with the
ServerApp) and the Ray processes run in it, so the process group of the SuperLink alone
does not hold the simulation: these helpers find every descendant's group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name, state first
    (``OSError`` once the process is gone).

    The command name may hold spaces and parentheses: the fields follow the last ")".
    """
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM a process started with ``start_new_session=True``, its group and the groups
    of all its descendants; SIGKILL whatever is left of them after ``timeout`` seconds.

    The descendants' groups matter: Flower's SuperExec starts a session of its own, and
    flwr-simulation (with the ServerApp) and the Ray processes run in it, so stopping
    the SuperLink's group alone would leave the whole simulation running without it.
    """
    if process.poll() is not None:
        return
    stop_process_tree(process.pid, timeout)
    process.wait()


def stop_process_tree(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``pid`` (a session leader) and the groups of all its
    descendants, then SIGKILL whatever is left of them after ``timeout`` seconds."""
    try:
        groups = {os.getpgid(pid)} | descendant_groups(pid)
    except ProcessLookupError:  # exited meanwhile
        return
    groups.discard(os.getpgrp())  # never our own group
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _live_groups(groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_groups(_live_groups(groups), signal.SIGKILL)


def kill_process_tree(pid: int) -> list[int]:
    """SIGKILL the process group of ``pid`` and the groups of all its descendants at once,
    as a crash would end them (no SIGTERM first); the pids that were in them."""
    table = process_table()
    try:
        groups = {os.getpgid(pid)} | {table[child][1] for child in descendants(pid, table)}
    except ProcessLookupError:  # exited meanwhile
        return []
    groups.discard(os.getpgrp())  # never our own group
    members = [member for member, (_, group, _) in table.items() if group in groups]
    _signal_groups(groups, signal.SIGKILL)
    return members


def process_table() -> dict[int, tuple[int, int, str]]:
    """Every process as pid -> (parent pid, process group, state), from /proc (Linux;
    empty where there is no /proc)."""
    table = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(int(entry.name))
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    return table


def descendants(pid: int, table: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """Every process below ``pid`` (children, their children, ...; empty without /proc)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, []))
    return found


def descendant_groups(pid: int) -> set[int]:
    """Process groups of every descendant of ``pid`` (empty without /proc)."""
    table = process_table()
    return {table[child][1] for child in descendants(pid, table)}


def _live_groups(groups: set[int]) -> set[int]:
    """Those of ``groups`` with a member that has not exited (zombies do not count)."""
    table = process_table()
    if not table:  # no /proc: ask the kernel, zombies included
        return {group for group in groups if _group_exists(group)}
    return {
        group for _, group, state in table.values() if group in groups and state not in ("Z", "X")
    }


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_groups(groups: set[int], signal_number: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal_number)
