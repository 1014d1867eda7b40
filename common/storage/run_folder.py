"""A run's folder on disk: config, per-epoch (or per-round) metrics, results, plots.

Writes are atomic (temporary file + rename) or append-and-flush, so a crash never
leaves a half-written result and never loses rows already written.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from common.storage.atomic import write_text_atomically


def new_run_dir(root: Path, label: str) -> Path:
    """Create ``root/<label>-<UTC timestamp>`` (suffixed if it already exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(root) / f"{label}-{stamp}"
    path, counter = base, 1
    while path.exists():
        counter += 1
        path = base.with_name(f"{base.name}-{counter}")
    path.mkdir(parents=True)
    return path


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically."""
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class MetricsCSV:
    """Append rows to a CSV as they come, flushed, adding the header once."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        if not path.exists():
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row; missing columns stay empty, unknown keys are an error."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path}: unknown columns {sorted(unknown)}")
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(column, "") for column in self.columns])
            handle.flush()
            os.fsync(handle.fileno())


def cut_csv_rows(path: Path, rows: int) -> int:
    """Keep the header and the first ``rows`` data rows of a CSV, atomically, byte for byte
    (line endings included); returns how many data rows it held before."""
    with path.open(newline="") as handle:
        lines = handle.readlines()
    write_text_atomically(path, "".join(lines[: rows + 1]))
    return max(len(lines) - 1, 0)


def plot_series(
    path: Path, x: list[float], series: dict[str, list[float]], xlabel: str, title: str
) -> None:
    """One PNG with one line per series (e.g. validation NDCG@10 per epoch).

    Matplotlib is imported here, not with the module: the ServerApp, clients and command
    lines that only write metrics and JSON would pay about 0.3 s of CPU each to load it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        axis.plot(x[: len(values)], values, marker="o", markersize=3, label=label)
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
