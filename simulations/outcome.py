"""What a finished launch says: its outcome, why it failed, the way on, its plots.

``flwr run`` exits 0 even when the run failed, so the launcher reads ``summary.json``
itself (:func:`check_outcome`); a failed run ends with one line naming what failed,
the last saved round and what to do (:func:`way_on`).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from common.storage.run_folder import plot_series


class LaunchError(Exception):
    """A launch cannot start or its run did not complete; the message says why."""


def check_outcome(results_dir: Path) -> dict[str, Any]:
    """The run's summary, or a LaunchError saying why the run did not complete."""
    path = results_dir / "summary.json"
    if not path.is_file():
        raise LaunchError(
            f"run did not complete: {path} is missing; reason: "
            f"{failure_line(results_dir / 'flwr.log')!r} (see {results_dir / 'flwr.log'})"
        )
    summary = json.loads(path.read_text())
    if summary.get("status") != "completed":
        reason = summary.get("error", f"status {summary.get('status')!r}")
        raise LaunchError(f"run failed: {reason} (see {results_dir / 'flwr.log'})")
    return dict(summary)


def failure_line(path: Path) -> str:
    """The last exception line of a log (``ValueError: ...``), else its last line."""
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
    return (errors or lines or [""])[-1]


def write_plots(results_dir: Path) -> None:
    """Validation NDCG@10 and train loss per round, from metrics.csv."""
    with (results_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for column, filename, title in (
        ("valid_ndcg@10", "valid_ndcg.png", "validation NDCG@10 (all users)"),
        ("train_loss", "train_loss.png", "client train loss (weighted mean)"),
    ):
        points = [(float(r["round"]), float(r[column])) for r in rows if r.get(column)]
        if points:
            xs, ys = zip(*points, strict=True)
            plot_series(results_dir / filename, list(xs), {column: list(ys)}, "round", title)


def way_on(results_dir: Path) -> str:
    """What to do after a failed run: resume it (if a round was saved) or start again."""
    state = results_dir / "state" / "server_state.json"
    try:
        saved = int(json.loads(state.read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return ". Nothing was saved to resume from: start the run again"
    return (
        f". Round {saved} was the last saved: carry on with `python -m simulations.launch "
        f"--resume {results_dir}`"
    )


def outcome_word(summary: dict[str, Any]) -> str:
    """``done``, or ``done (degraded: ...)`` when rounds lost clients or updates were refused."""
    degraded, rounds = summary.get("degraded_rounds", 0), summary.get("rounds", 0)
    failures, rejected = summary.get("client_failures", 0), summary.get("rejected_updates", 0)
    if not (degraded or failures or rejected):
        return "done"
    return (
        f"done (degraded: {degraded} of {rounds} rounds, {failures} client failures, "
        f"{rejected} updates rejected)"
    )
