"""Federated benchmark: accuracy against centralized, round time at scale, memory, overhead.

``python benchmarks/federated.py [--only accuracy scaling overhead] [--datasets ...]``
writes ``benchmarks/results/federated.json`` (sections merged into an existing file):

- ``accuracy``: per data set, a full federated simulation of its ``<dataset>-cohort``
  preset (every user a client), its test HR@10 / NDCG@10 next to the centralized figure
  of the same model from ``centralized.json``, the ratio, rounds, users per round,
  seconds per round and the whole simulation's peak memory (Ray workers included).
- ``scaling``: Beauty, all 22,363 users as clients, seconds per round with 100, 500 and
  1,000 users sampled per round.
- ``overhead``: one Flower client per user (cross-device, a tiny model), the framework's
  cost per client-round: round time per client minus the same clients' training
  compute measured in-process.

Every run is a real simulation through :mod:`simulations.launch`; run nothing else on
the machine meanwhile (the figures are timings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.process_memory import PeakMemory
from common.data.partitioning import load_partition, load_split
from common.federation.config import FederatedConfig
from common.models import build_model
from common.training.local import round_seed, train_local
from simulations.launch import build_parser, launch, unwind_on_sigterm

RESULTS = ROOT / "results" / "federated.json"
CENTRALIZED = ROOT / "results" / "centralized.json"
RUNS = ROOT / "runs"
GIB = 2**30
ACCURACY_PRESETS = {"ml-100k": "ml100k-cohort", "beauty": "beauty-cohort"}
SCALING_USERS = (100, 500, 1000)
OVERHEAD_RUN = {"partition-mode": "cross-device", "model": "lstm", "dim": 8, "layers": 1,
                "max-len": 20,
                "local-epochs": 1, "optimizer": "sgd", "lr": 0.1, "batch-size": 64,
                "strategy": "fedavg", "fraction-train": 0.1, "num-server-rounds": 5,
                "eval-every": 1000}  # fmt: skip


def run_preset(preset: str, overrides: dict[str, Any], port: int) -> dict[str, Any]:
    """Launch one simulation; its summary plus wall time and peak tree memory."""
    args = build_parser().parse_args(
        ["--preset", preset, "--results", str(RUNS), "--port", str(port)]
        + [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    )
    started = time.perf_counter()
    with PeakMemory() as memory:
        summary = launch(args)
    return {
        "summary": summary,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(memory.peak_rss / GIB, 3),
        "peak_pss_gib": round(memory.peak_pss / GIB, 3),
    }


def accuracy(dataset: str, port: int) -> dict[str, Any]:
    """A full run of the data set's cohort preset against the centralized figure."""
    run = run_preset(ACCURACY_PRESETS[dataset], {}, port)
    summary = run["summary"]
    config = summary["config"]
    centralized = json.loads(CENTRALIZED.read_text())[dataset][config["model"]]["test"]
    n_users = load_split(config["dataset"]).n_users
    return {
        "preset": ACCURACY_PRESETS[dataset],
        "model": config["model"],
        "clients": n_users,
        "users_per_round": round(n_users * config["fraction-train"], 1),
        "rounds": summary["rounds"],
        "released_round": summary["released_round"],
        "seconds_per_round": round(summary["mean_round_seconds"], 3),
        "test": {key: summary["test"][key] for key in ("hr@10", "ndcg@10")},
        "centralized_test": {key: centralized[key] for key in ("hr@10", "ndcg@10")},
        "ratio_hr@10": round(summary["test"]["hr@10"] / centralized["hr@10"], 3),
        "ratio_ndcg@10": round(summary["test"]["ndcg@10"] / centralized["ndcg@10"], 3),
        **{key: run[key] for key in ("wall_seconds", "peak_rss_gib", "peak_pss_gib")},
    }


def steady_round_seconds(summary: dict[str, Any]) -> float:
    """Median seconds per round after the first (which pays Ray's and the app's start)."""
    with (Path(summary["config"]["results-dir"]) / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seconds = [float(row["round_seconds"]) for row in rows if int(row["round"]) >= 2]
    return float(np.median(seconds))


def scaling(port: int, rounds: int = 6) -> list[dict[str, Any]]:
    """Beauty seconds per round for several numbers of users sampled per round."""
    n_users = load_split("beauty").n_users
    rows = []
    for users in SCALING_USERS:
        overrides = {"fraction-train": users / n_users, "num-server-rounds": rounds,
                     "eval-every": 1000}  # fmt: skip
        run = run_preset("beauty-cohort", overrides, port)
        rows.append(
            {
                "clients": n_users,
                "users_per_round": users,
                "rounds": rounds,
                "median_seconds_per_round_after_first": round(
                    steady_round_seconds(run["summary"]), 3
                ),
                "mean_seconds_per_round": round(run["summary"]["mean_round_seconds"], 3),
                **{key: run[key] for key in ("peak_rss_gib", "peak_pss_gib")},
            }
        )
        print(f"beauty, {users} users per round: {rows[-1]}")
    return rows


def training_compute(config: FederatedConfig, clients: int) -> float:
    """Seconds of local training of ``clients`` one-user clients, in-process, no Flower."""
    split = load_split(config.dataset)
    n_parts = config.num_partitions(split.n_users)
    model = build_model(config.model_config(), split.n_items)
    partitions = [
        load_partition(config.dataset, n_parts, pid, config.seed) for pid in range(clients)
    ]
    started = time.perf_counter()
    for partition in partitions:
        windows = partition.training_windows(config.max_len, config.n_gap_buckets)
        train_local(model, windows, config, round_seed(config.seed, 1, partition.partition_id))
    return time.perf_counter() - started


def overhead(port: int) -> dict[str, Any]:
    """Framework seconds per client-round with one Flower client per user (ML-100k)."""
    run = run_preset("ml100k-fedavg", OVERHEAD_RUN, port)
    config = FederatedConfig.from_run_config({**OVERHEAD_RUN, "dataset": "ml-100k"})
    clients = int(load_split("ml-100k").n_users * config.fraction_train)
    round_seconds = steady_round_seconds(run["summary"])
    per_client = round_seconds / clients
    compute = training_compute(config, clients) / clients
    return {
        "clients": load_split("ml-100k").n_users,
        "clients_per_round": clients,
        "median_seconds_per_round_after_first": round(round_seconds, 3),
        "seconds_per_client_round": round(per_client, 4),
        "training_seconds_per_client": round(compute, 4),
        "overhead_ms_per_client_round": round(1000 * (per_client - compute), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and merge them into ``federated.json``."""
    unwind_on_sigterm()  # a SIGTERM stops the running simulation too
    parser = argparse.ArgumentParser(prog="python benchmarks/federated.py", description=__doc__)
    parser.add_argument("--only", nargs="+", default=["accuracy", "scaling", "overhead"],
                        choices=["accuracy", "scaling", "overhead"])  # fmt: skip
    parser.add_argument("--datasets", nargs="+", default=list(ACCURACY_PRESETS),
                        choices=list(ACCURACY_PRESETS))  # fmt: skip
    parser.add_argument("--port", type=int, default=39391)
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "accuracy" in args.only:
        results.setdefault("accuracy", {})
        for dataset in args.datasets:
            results["accuracy"][dataset] = accuracy(dataset, args.port)
            print(json.dumps({dataset: results["accuracy"][dataset]}, indent=2))
            write(results)
    if "scaling" in args.only:
        results["scaling"] = scaling(args.port)
        write(results)
    if "overhead" in args.only:
        results["overhead"] = overhead(args.port)
        print(json.dumps(results["overhead"], indent=2))
        write(results)
    return 0


def write(results: dict[str, Any]) -> None:
    """Write the results file (sections are kept between partial runs)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results["machine_cores"] = len(os.sched_getaffinity(0))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
