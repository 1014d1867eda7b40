"""Update compression benchmark: bytes per client per round and accuracy, none/float16/int8.

Runs the ``ml100k-silo`` preset (10 edge nodes, same seed) through ``simulations.launch``
once per ``update-compression`` value, one after the other, and writes
``benchmarks/results/compression.json``: uplink bytes per client per round (the
replies' ArrayRecord bytes), the downlink model bytes, and test HR@10 / NDCG@10 of the
best checkpoint (selected on validation NDCG@10).

    python benchmarks/compression.py [--preset ml100k-silo] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data.partitioning import load_split
from common.federation.compression import COMPRESSIONS
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from common.storage.run_folder import write_json
from simulations.launch import build_parser, launch, unwind_on_sigterm
from simulations.superlink import free_port

RESULTS = ROOT / "benchmarks" / "results" / "compression.json"


def run_one(preset: str, overrides: list[str], method: str, root: Path) -> dict[str, Any]:
    """One simulation with ``update-compression = method``; its traffic and accuracy."""
    args = build_parser().parse_args(
        ["--preset", preset, "--results", str(root), "--port", str(free_port())]
        + ["--set", f"update-compression={method}"]
        + [item for pair in overrides for item in ("--set", pair)]
    )
    summary = launch(args)
    run_dir = Path(summary["config"]["results-dir"])
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["update_bytes_per_client"]]
    per_client = {float(r["update_bytes_per_client"]) for r in rows}
    if len(per_client) != 1:  # every reply has the model's shapes: sizes must not vary
        raise RuntimeError(f"{method}: bytes per client differ between rounds: {per_client}")
    config = FederatedConfig.from_run_config(summary["config"])
    model = build_model(config.model_config(), load_split(config.dataset).n_items)
    return {
        "uplink_bytes_per_client_per_round": per_client.pop(),
        "downlink_bytes_per_client_per_round": model_to_arrays(model).count_bytes(),
        "uplink_bytes_per_round": float(rows[0]["update_bytes"]),
        "test_hr@10": round(summary["test"]["hr@10"], 4),
        "test_ndcg@10": round(summary["test"]["ndcg@10"], 4),
        "valid_ndcg@10": round(summary["valid"]["ndcg@10"], 4),
        "released_round": summary["released_round"],
        "valid_ndcg@10_per_round": [round(float(r["valid_ndcg@10"]), 4) for r in rows],
        "mean_round_seconds": round(summary["mean_round_seconds"], 1),
        "run_folder": str(run_dir),
    }


def main() -> int:
    unwind_on_sigterm()  # a SIGTERM stops the running simulation too
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="ml100k-silo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="run folders")
    args = parser.parse_args()
    results: dict[str, Any] = {"preset": args.preset, "overrides": args.set, "runs": {}}
    for method in COMPRESSIONS:
        results["runs"][method] = run_one(args.preset, args.set, method, args.results)
        print(f"{method}: {json.dumps(results['runs'][method])}", flush=True)
    plain = results["runs"]["none"]["uplink_bytes_per_client_per_round"]
    for entry in results["runs"].values():
        entry["uplink_vs_none"] = round(entry["uplink_bytes_per_client_per_round"] / plain, 4)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
