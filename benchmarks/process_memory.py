"""Peak memory of a whole process tree (the launcher, SuperLink, Ray and its workers).

Linux only: reads ``/proc`` (the tree from :mod:`simulations.process_tree`). RSS counts
pages shared between processes (Ray's object store, the Python libraries) once per
process; PSS splits shared pages between the processes that map them, so the PSS sum is
the tree's real footprint. Both are reported.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from simulations.process_tree import descendants

PROC = Path("/proc")


def _kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) of the tree in bytes, summed over its processes."""
    pids = [root, *descendants(root)]
    rss = sum(_kib(PROC / str(pid) / "status", "VmRSS:") for pid in pids)
    pss = sum(_kib(PROC / str(pid) / "smaps_rollup", "Pss:") for pid in pids)
    return rss * 1024, pss * 1024


class PeakMemory:
    """Samples this process's tree every ``interval`` seconds while in a ``with`` block."""

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval = interval
        self.root = root if root is not None else os.getpid()
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss, pss = tree_memory(self.root)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
