"""Append-only, hash-chained JSON-lines files: the privacy ledger and a node's receipts.

Each record carries the SHA-256 of the line before it (the first one chains to
:data:`GENESIS`), so an edited, deleted, duplicated or reordered line breaks the chain.
:func:`append_chained` holds an exclusive ``flock`` while it reads the file's head and
writes one line, then ``fsync``\\ s: any number of processes can share a file and a
crash never loses a record that was reported written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

GENESIS = "0" * 64  # what the first record of every chained file chains to


def line_hash(line: bytes) -> str:
    """SHA-256 of one line as stored (without its newline): the chain's link."""
    return hashlib.sha256(line).hexdigest()


def _is_record(line: bytes) -> bool:
    """Whether a line holds a whole JSON object (a record), not a cut one."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _tail_head(descriptor: int) -> tuple[str, bool]:
    """Hash of the file's last record, and whether the file ends mid-line.

    Reads backwards from the end in growing blocks, so an append costs the same at
    any file size.
    """
    size = os.fstat(descriptor).st_size
    if size == 0:
        return GENESIS, False
    mid_line = os.pread(descriptor, 1, size - 1) != b"\n"
    block = 8192
    while True:
        start = max(0, size - block)
        lines = os.pread(descriptor, size - start, start).split(b"\n")
        complete = lines if start == 0 else lines[1:]  # the first may be cut by the block
        for line in reversed(complete):
            if line.strip() and _is_record(line):
                return line_hash(line), mid_line
        if start == 0:
            return GENESIS, mid_line
        block *= 4


def append_chained(
    path: Path,
    render: Callable[[str], str],
    after: Callable[[bytes], None] | None = None,
) -> bytes:
    """Append the line ``render(head hash)`` durably; returns the line (no newline).

    Under an exclusive ``flock``: read the head, write one line (a newline first if the
    file ends with a line cut short by a crash), ``fsync``, then ``after(line)`` while the
    lock is still held (e.g. a signature in a sidecar file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        head, mid_line = _tail_head(descriptor)
        line = render(head).encode("utf-8")
        payload = (b"\n" if mid_line else b"") + line + b"\n"
        written = os.write(descriptor, payload)
        if written != len(payload):
            raise OSError(f"{path}: short write ({written} of {len(payload)} bytes)")
        os.fsync(descriptor)
        if after is not None:
            after(line)
    finally:
        os.close(descriptor)  # releases the lock
    if created:
        fsync_folder(path.parent)
    return line


def append_line(path: Path, line: bytes) -> None:
    """Append one unchained line durably (a sidecar record), creating the file."""
    created = not path.exists()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        payload = line + b"\n"
        if os.write(descriptor, payload) != len(payload):
            raise OSError(f"{path}: short write")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a new file's directory entry durable too."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
