"""Population scale: one DP statistics release and one DP-FedAvg round at 10k to 1M users.

``python benchmarks/scale.py [--users 10000 100000 1000000] [--data DIR] [--keep]``
writes ``benchmarks/results/scale.json`` and prints a table.

A scale test, not an accuracy claim: N users are drawn with replacement from Amazon
Beauty's users (:func:`resample_users`), each under a new id with its own item sequence,
and written as a Beauty-style click log with the attributes of its items beside it
(:func:`write_resampled_log`). Each population runs the real launcher
(``python -m simulations.launch``) on a preset derived from ``beauty-dp-model`` and
``beauty-dp``: user-level DP, the statistics release taking half of epsilon 8, one
training round of the small attention model with about 1,000 Poisson-sampled users,
two edge aggregators (one per core). Measured: wall time, the release's seconds and
the round's (from the run log and ``metrics.csv``), the server's validation and test
passes over every user, and the peak memory of the whole process tree (PSS and RSS
sums, :mod:`benchmarks.process_memory`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.process_memory import PeakMemory
from common.data.attributes import ATTRIBUTE_SUFFIX, builtin_attributes_path
from common.data.loaders import load_dataset
from simulations.launch import load_preset
from simulations.superlink import free_port

RESULTS = ROOT / "results" / "scale.json"
POPULATIONS = (10_000, 100_000, 1_000_000)
USERS_PER_ROUND = 1_000
EDGE_AGGREGATORS = 2  # one cohort client per core, as in beauty-dp
SEED = 42
GIB = 2**30
SCALE_KEYS = {"partition-mode": "cohort", "dp": "user", "statistics": True,
              "statistics-share": 0.5, "num-server-rounds": 1, "client-threads": 1,
              "item-attributes": "builtin", "eval-every": 1}  # fmt: skip
EVALUATION_NOTE = (
    "validation and test rank every item for every user; no run-config key samples them "
    "(eval-every never skips round 0 or the last round, fraction-evaluate is client-side "
    "evaluation); the on-device scorer's figures are computed once per stage"
)
RELEASE_LINE = re.compile(r"statistics released in ([\d.]+)s")
HARNESS_LINE = re.compile(r"validation statistics \(simulation only\) in ([\d.]+)s")


def resample_users(frame: pd.DataFrame, n_users: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n_users`` users drawn with replacement from ``frame``'s, renamed 1..n_users.

    Each drawn user keeps its interactions (items, timestamps if any) in file order, so
    a user drawn twice becomes two users with the same history.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be positive, got {n_users}")
    codes, uniques = pd.factorize(frame["user"], sort=False)
    rows_by_user = np.argsort(codes, kind="stable")  # file order within each user
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    drawn = rng.integers(0, len(uniques), size=n_users)
    lengths = counts[drawn]
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    within = np.arange(int(lengths.sum())) - first
    rows = rows_by_user[np.repeat(starts[drawn], lengths) + within]
    resampled = frame.iloc[rows].reset_index(drop=True)
    resampled["user"] = np.repeat(np.arange(1, n_users + 1), lengths)
    return resampled


def write_resampled_log(frame: pd.DataFrame, attributes: Path, folder: Path) -> Path:
    """Write a resampled log the loader accepts, with its items' attributes beside it.

    Without timestamps: a Beauty-style ``users.txt`` (``user item item ...``, one line
    per user in time order); with them: ``users.csv`` (``user,item,timestamp``). The
    attribute file keeps only the log's items (the loader refuses unknown items) and is
    named so that ``item-attributes = "builtin"`` finds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if "timestamp" in frame.columns:
        path = folder / "users.csv"
        frame[["user", "item", "timestamp"]].to_csv(path, index=False)
    else:
        path = folder / "users.txt"
        ends = np.flatnonzero(np.diff(frame["user"].to_numpy())) + 1
        items = np.split(frame["item"].astype(str).to_numpy(), ends)
        users = frame["user"].to_numpy()[np.concatenate([[0], ends])]
        with path.open("w") as handle:
            handle.writelines(f"{u} {' '.join(i)}\n" for u, i in zip(users, items, strict=True))
    with gzip.open(attributes, "rt", encoding="utf-8") as handle:
        known = json.load(handle)
    present = {str(item) for item in frame["item"].unique()}
    kept = {item: values for item, values in known.items() if item in present}
    (folder / f"{path.stem}{ATTRIBUTE_SUFFIX}").write_text(json.dumps(kept))
    return path


def scale_preset(dataset: Path, n_users: int) -> dict[str, Any]:
    """beauty-dp-model's model and training, beauty-dp's release, one round at ``n_users``."""
    keys = {**load_preset("beauty-dp-model")[1], **load_preset("beauty-dp")[1], **SCALE_KEYS}
    keys.update({
        "dataset": str(dataset),
        "fraction-train": min(1.0, USERS_PER_ROUND / n_users),
        "users-per-client": math.ceil(n_users / EDGE_AGGREGATORS),
    })  # fmt: skip
    return keys


def run_launcher(preset: Path, results: Path) -> dict[str, Any]:
    """Run ``simulations.launch`` as its own process; exit code, wall time, peak tree memory."""
    command = [sys.executable, "-m", "simulations.launch", "--preset", str(preset),
               "--results", str(results), "--port", str(free_port())]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT.parent, stdout=subprocess.DEVNULL)
    with PeakMemory(root=process.pid) as memory:
        code = process.wait()
    return {
        "exit_code": code,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_pss_gib": round(memory.peak_pss / GIB, 3),
        "peak_rss_gib": round(memory.peak_rss / GIB, 3),
    }


def run_figures(run_dir: Path) -> dict[str, Any]:
    """Seconds of the release, the training round and the evaluation passes of one run.

    ``summary.json`` must say completed (``flwr run`` exits 0 even when a run failed).
    ``metrics.csv`` has the server's seconds after each round (validation when computed,
    the checkpoint); the final figures of the released round (test) are the rest of the
    server's time. Round 0's seconds hold Ray's start and the release.
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "completed":
        raise RuntimeError(f"{run_dir}: run {summary.get('status')}: {summary.get('error')}")
    log = (run_dir / "flwr.log").read_text(errors="replace")
    release = RELEASE_LINE.search(log)
    harness = HARNESS_LINE.search(log)
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = {int(row["round"]): row for row in csv.DictReader(handle)}
    accounted = sum(float(r["round_seconds"]) + float(r["eval_seconds"]) for r in rows.values())
    return {
        "clients_trained": int(float(rows[1]["clients"])),
        "release_seconds": float(release.group(1)) if release else None,
        "harness_release_seconds": float(harness.group(1)) if harness else None,
        "round_seconds": float(rows[1]["round_seconds"]),
        "validation_seconds": [float(rows[r]["eval_seconds"]) for r in sorted(rows)],
        "final_eval_seconds": round(summary["total_seconds"] - accounted, 1),
        "server_seconds": round(summary["total_seconds"], 1),
        "epsilon": (summary.get("privacy") or {}).get("epsilon"),
        "test_hr@10": summary["test"]["hr@10"],
    }


def write_population(n_users: int, folder: Path) -> tuple[Path, int]:
    """Resample Beauty to ``n_users`` users in ``folder``; the log's path and interactions.

    Its own function so that the resampled frame is freed before the launch is measured.
    """
    frame = resample_users(load_dataset("beauty").frame, n_users, np.random.default_rng(SEED))
    return write_resampled_log(frame, builtin_attributes_path("beauty"), folder), len(frame)


def population(n_users: int, data: Path, keep: bool) -> dict[str, Any]:
    """Resample, launch and measure one population."""
    folder = data / f"users-{n_users}"
    dataset, interactions = write_population(n_users, folder)
    preset = folder / f"scale-{n_users}.toml"
    preset.write_text(tomli_w.dumps(scale_preset(dataset, n_users)))
    results = folder / "runs"
    results.mkdir()
    load_before = os.getloadavg()[0]
    measured = run_launcher(preset, results)
    run_dir = next(results.iterdir(), results)  # none: the launcher refused the config
    row: dict[str, Any] = {"users": n_users, "interactions": interactions, **measured}
    row["load_average_before"] = round(load_before, 2)  # other work on the machine
    try:
        row.update(run_figures(run_dir))
    except (OSError, RuntimeError, KeyError) as error:
        row["error"] = f"launcher exit {measured['exit_code']}: {error}"
    evaluation = sum(row.get("validation_seconds", [])) + row.get("final_eval_seconds", 0)
    row["evaluation_seconds"] = round(evaluation, 1)
    row["evaluation_share_of_wall"] = round(evaluation / row["wall_seconds"], 3)
    if keep:
        row["run_dir"] = str(run_dir)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The measured populations, one line each."""
    header = (f"{'users':>9} {'wall s':>7} {'release s':>9} {'round s':>7} {'eval s':>7} "
              f"{'eval share':>10} {'PSS GiB':>7} {'RSS GiB':>7}")  # fmt: skip
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['users']:>9} failed: {row['error']}")
            continue
        lines.append(
            f"{row['users']:>9} {row['wall_seconds']:>7.0f} {row['release_seconds']:>9.1f} "
            f"{row['round_seconds']:>7.1f} {row['evaluation_seconds']:>7.0f} "
            f"{row['evaluation_share_of_wall']:>10.0%} {row['peak_pss_gib']:>7.2f} "
            f"{row['peak_rss_gib']:>7.2f}"
        )
    return "\n".join(lines)


def write(rows: list[dict[str, Any]]) -> None:
    """Merge the measured populations into ``scale.json`` (kept between partial runs)."""
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    measured = {str(row["users"]): row for row in results.get("populations", [])}
    measured.update({str(row["users"]): row for row in rows})
    results["populations"] = sorted(measured.values(), key=lambda row: row["users"])
    results["machine_cores"] = len(os.sched_getaffinity(0))
    results["users_per_round"] = USERS_PER_ROUND
    results["edge_aggregators"] = EDGE_AGGREGATORS
    results["run_config"] = dict(SCALE_KEYS)
    results["evaluation"] = EVALUATION_NOTE
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Measure each population in turn, writing the results after each."""
    parser = argparse.ArgumentParser(prog="python benchmarks/scale.py", description=__doc__)
    parser.add_argument("--users", nargs="+", type=int, default=list(POPULATIONS))
    parser.add_argument("--data", type=Path, help="folder for the logs and runs (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and run folders")
    args = parser.parse_args(argv)
    data = args.data or Path(tempfile.mkdtemp(prefix="fedseqrec-scale-"))
    rows = []
    for n_users in args.users:
        rows.append(population(n_users, data, args.keep))
        write(rows)
        print(table(rows[-1:]), flush=True)
        if not args.keep:
            shutil.rmtree(data / f"users-{n_users}")
    print(table(rows))
    for row in rows:
        if row.get("evaluation_share_of_wall", 0) > 0.5:
            print(f"{row['users']} users: validation and test over every user take "
                  f"{row['evaluation_share_of_wall']:.0%} of the wall time")  # fmt: skip
            print(f"  ({EVALUATION_NOTE})")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
