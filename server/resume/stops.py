"""Why a run stopped before it completed: ``stops.jsonl`` in the run folder, append-only.

Whoever sees a run stop writes one line (time, the part that failed, the cause, the last
saved round): the launcher when a part of the simulation died or the run failed, the
launcher's watchdog when the launcher itself died. A resume lists the cause of the stop
before it in ``summary.json``'s ``resumed``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STOPS_FILE = "stops.jsonl"
UNRECORDED = (
    "not recorded: every process of the run stopped at once (killed together, or the "
    "machine stopped)"
)


def record_stop(folder: Path, part: str, cause: str) -> None:
    """Append why the run in ``folder`` stopped (``part``: which process failed)."""
    entry = {"time": time.time(), "part": part, "cause": cause}
    with (Path(folder) / STOPS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_stops(folder: Path) -> list[dict[str, Any]]:
    """Every complete stop record of ``folder`` (a line cut short by a crash is skipped)."""
    path = Path(folder) / STOPS_FILE
    if not path.is_file():
        return []
    stops = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("time"), int | float):
            stops.append(entry)
    return stops


def stop_cause(folder: Path, since: float) -> dict[str, Any]:
    """The last stop recorded after ``since`` (a Unix time): ``{"part", "cause"}``."""
    later = [entry for entry in read_stops(folder) if entry["time"] >= since]
    if not later:
        return {"part": "unknown", "cause": UNRECORDED}
    return {"part": str(later[-1].get("part")), "cause": str(later[-1].get("cause"))}
