"""Empirical privacy audit benchmark: canary membership inference on ML-100k, with and without DP.

``python benchmarks/canary_audit.py [--cases ...] [--repeats 3] [--canaries 200]
[--set key=value ...]`` writes ``benchmarks/results/canary_audit.json`` (or ``--output``;
cases not run this time are kept), one entry per case, each ``--repeats`` real
simulations through :mod:`simulations.canary_audit` (DP noise is secret, so every run
differs: the entry holds every run and the mean and spread of the AUC and the empirical
epsilon lower bound):

- ``no-dp``: the ``ml100k-cohort`` preset (no DP, 400 rounds; the model that trains),
- ``no-dp-same-settings``: ``ml100k-dp`` with ``dp = "none"`` (what DP is compared to),
- ``epsilon-8``: ``ml100k-dp`` as it is (user-level DP-FedAvg, target epsilon 8),
- ``epsilon-2``: ``ml100k-dp`` at target epsilon 2.

Every case plants half of ``--canaries`` canary users among the 943 real ones (the
audit keeps the presets' two cohorts). ``--set`` applies to every case (for a quick
smoke run, e.g. ``--set num-server-rounds=3 --output /tmp/smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import numpy as np

from common.storage.run_folder import write_json
from simulations.canary_audit import build_parser, render, run_audit
from simulations.launch import unwind_on_sigterm

RESULTS = ROOT / "results" / "canary_audit.json"
RUNS = ROOT / "runs"
CASES: dict[str, tuple[str, list[str]]] = {
    "no-dp": ("ml100k-cohort", []),
    "no-dp-same-settings": ("ml100k-dp", ['dp="none"']),
    "epsilon-8": ("ml100k-dp", []),
    "epsilon-2": ("ml100k-dp", ["target-epsilon=2.0"]),
}


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One canary audit: its ``canary_audit.json`` without the per-canary losses."""
    preset, overrides = CASES[name]
    settings = [*overrides, *args.set]
    audit_args = build_parser().parse_args(
        ["--preset", preset, "--canaries", str(args.canaries),
         "--canary-length", str(args.canary_length), "--results", str(RUNS),
         "--port", str(args.port)]
        + [f"--set={item}" for item in settings]
    )  # fmt: skip
    started = time.perf_counter()
    audit = run_audit(audit_args)
    print(render(audit))
    result = {"preset": preset, "settings": settings, **audit.to_dict()}
    del result["losses"]  # they stay in the run's canary_audit.json
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def repeated_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--repeats`` audits of one case, with the mean and spread of what they measured."""
    runs = [run_case(name, args) for _ in range(args.repeats)]
    aucs = [run["empirical"]["auc"] for run in runs]
    bounds = [run["empirical"]["epsilon_lower_bound"] for run in runs]
    hits = [run["test"]["hr@10"] for run in runs]
    epsilons = [run["theoretical"]["epsilon"] for run in runs]  # None without DP
    return {
        "preset": runs[0]["preset"],
        "settings": runs[0]["settings"],
        "repeats": len(runs),
        "auc_mean": float(np.mean(aucs)),
        "auc_std": float(np.std(aucs, ddof=1)) if len(runs) > 1 else 0.0,
        "epsilon_lower_bound_mean": float(np.mean(bounds)),
        "epsilon_lower_bound_max": float(np.max(bounds)),
        "theoretical_epsilon": None if None in epsilons else max(epsilons),
        "test_hr@10_mean": float(np.mean(hits)),
        "test_hr@10_std": float(np.std(hits, ddof=1)) if len(runs) > 1 else 0.0,
        "exceeds_theoretical": any(run["exceeds_theoretical"] for run in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases one after the other, writing the results after each."""
    unwind_on_sigterm()  # a SIGTERM stops the running simulation too
    parser = argparse.ArgumentParser(prog="python benchmarks/canary_audit.py", description=__doc__)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="audits per case")
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--canary-length", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--port", type=int, default=39591)
    args = parser.parse_args(argv)
    earlier = json.loads(args.output.read_text()) if args.output.is_file() else {}
    same = (earlier.get("canaries"), earlier.get("canary_length")) == (
        args.canaries, args.canary_length,
    )  # fmt: skip
    results: dict[str, Any] = {
        "canaries": args.canaries,
        "canary_length": args.canary_length,
        "machine_cores": len(os.sched_getaffinity(0)),
        "cases": dict(earlier.get("cases", {})) if same else {},
    }
    for name in args.cases:
        results["cases"][name] = repeated_case(name, args)
        print(json.dumps({name: results["cases"][name]}))
        write_json(args.output, results)
    return 1 if any(case["exceeds_theoretical"] for case in results["cases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
