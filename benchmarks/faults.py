"""Failure benchmark: clients that drop out, and clients that send NaN or scaled updates.

``python benchmarks/faults.py [--rounds 12] [--only clean fail30 ...]`` runs the
``ml100k-silo`` preset (10 edge nodes of about 95 users, every node every round) for
``--rounds`` rounds in each setting below and writes ``benchmarks/results/faults.json``:

- ``clean``: no faults (FedAvg), the reference;
- ``fail30``: 30% of the sampled clients raise every round (``fault-kind = "error"``),
  ``min-replies = 0.5``: the run must complete with test HR@10 within 5% of clean;
- ``nan10_defended`` / ``scale10_defended``: 10% of the clients send a NaN or a
  100x-scaled update, with the server's update checks on and Flower's FedTrimmedAvg:
  HR@10 must stay at or above 90% of clean;
- ``nan10_undefended`` / ``scale10_undefended``: the same attacks with the checks off
  (``validate-updates = false``) and plain FedAvg: the damage (a failed run, or a lower
  HR@10) is the point.

Every run is a real simulation through :mod:`simulations.launch`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from simulations.launch import LaunchError, build_parser, launch, unwind_on_sigterm
from simulations.superlink import free_port

RESULTS = ROOT / "results" / "faults.json"
RUNS = ROOT / "runs"
PRESET = "ml100k-silo"
DEFENDED = {"validate-updates": True, "strategy": "fedtrimmedavg", "trimmed-beta": 0.2}
UNDEFENDED = {"validate-updates": False, "strategy": "fedavg"}
SETTINGS: dict[str, dict[str, Any]] = {
    "clean": {},
    "fail30": {"fault-rate": 0.3, "fault-kind": "error", "min-replies": 0.5},
    "nan10_defended": {"fault-rate": 0.1, "fault-kind": "nan", **DEFENDED},
    "scale10_defended": {"fault-rate": 0.1, "fault-kind": "scale", **DEFENDED},
    "nan10_undefended": {"fault-rate": 0.1, "fault-kind": "nan", **UNDEFENDED},
    "scale10_undefended": {"fault-rate": 0.1, "fault-kind": "scale", **UNDEFENDED},
}


def run_setting(name: str, rounds: int) -> dict[str, Any]:
    """Launch one setting; its test figures and fault counts, or why it failed."""
    overrides = {"num-server-rounds": rounds, **SETTINGS[name]}
    args = build_parser().parse_args(
        ["--preset", PRESET, "--results", str(RUNS), "--port", str(free_port())]
        + [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    )
    started = time.perf_counter()
    try:
        summary = launch(args)
    except LaunchError as error:
        return {"overrides": overrides, "status": "failed", "error": str(error)[:400],
                "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return {
        "overrides": overrides,
        "status": "completed",
        "test_hr@10": round(summary["test"]["hr@10"], 4),
        "test_ndcg@10": round(summary["test"]["ndcg@10"], 4),
        "released_round": summary["released_round"],
        "degraded_rounds": summary["degraded_rounds"],
        "client_failures": summary["client_failures"],
        "rejected_updates": summary["rejected_updates"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def verdicts(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each setting's HR@10 relative to clean, and whether the issue's bar is met."""
    clean = runs.get("clean", {}).get("test_hr@10")
    out: dict[str, Any] = {}
    for name, run in runs.items():
        if name == "clean" or not clean:
            continue
        ratio = run.get("test_hr@10", 0.0) / clean if run["status"] == "completed" else 0.0
        bar = 0.95 if name == "fail30" else 0.90 if name.endswith("_defended") else None
        out[name] = {"hr@10_vs_clean": round(ratio, 3),
                     "meets_bar": None if bar is None else ratio >= bar}  # fmt: skip
    return out


def table(runs: dict[str, dict[str, Any]], relative: dict[str, Any]) -> str:
    """A plain-text table of the runs."""
    lines = [f"{'setting':<20} {'status':<10} {'HR@10':>7} {'vs clean':>9} {'degraded':>9} "
             f"{'failures':>9} {'rejected':>9} {'seconds':>8}"]  # fmt: skip
    for name, run in runs.items():
        ratio = relative.get(name, {}).get("hr@10_vs_clean", 1.0 if name == "clean" else "")
        lines.append(
            f"{name:<20} {run['status']:<10} {run.get('test_hr@10', ''):>7} {ratio:>9} "
            f"{run.get('degraded_rounds', ''):>9} {run.get('client_failures', ''):>9} "
            f"{run.get('rejected_updates', ''):>9} {run['wall_seconds']:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the settings, write the JSON, print the table."""
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(prog="python benchmarks/faults.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    for name in args.only:
        runs[name] = run_setting(name, args.rounds)
        print(f"{name}: {runs[name]}", flush=True)
    relative = verdicts(runs)
    result = {"preset": PRESET, "rounds": args.rounds, "runs": runs, "relative": relative,
              "total_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(runs, relative))
    return 0


if __name__ == "__main__":
    sys.exit(main())
