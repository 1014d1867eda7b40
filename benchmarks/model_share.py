"""What the DP-trained model adds to the on-device scorer at the same total epsilon (issue 24).

``python benchmarks/model_share.py [--datasets beauty toys sports] [--repeats 3]``
writes ``benchmarks/results/model_share.json`` (data sets merged into an existing file).

Per data set, ``--repeats`` real simulations (:mod:`simulations.launch`, secret noise, so
every run differs) of its ``<dataset>-dp-blend`` preset: one user-level budget (epsilon 8,
delta = 1 / (10 x users)) shared by the DP statistics (85%) and 40 DP-FedAvg rounds of
a sequence model, every run's ledger audited. Each run's ``summary.json`` ``side_by_side``
gives the test figures of four rankings over the same release: popularity, the scorer
alone, the model alone and the blend devices use (:mod:`server.side_by_side`).

The ablation at the same total epsilon compares the blend with the statistics-only preset
``<dataset>-dp``, whose scorer has the whole budget: its epsilon-8 runs are read from
``privacy.json`` (``python benchmarks/privacy.py --only utility --epsilons 8``), the same
preset and code path. ``share`` is the blend's mean minus that mean: the model's share of
the private figure. Mean and sample standard deviation over the runs for every row.
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

import numpy as np

from server.side_by_side import ROWS, SIDE_BY_SIDE
from simulations.launch import build_parser, launch, unwind_on_sigterm

RESULTS = ROOT / "results" / "model_share.json"
PRIVACY = ROOT / "results" / "privacy.json"
RUNS = ROOT / "runs"
DATASETS = ("beauty", "toys", "sports")
METRICS = ("hr@10", "ndcg@10")


def blended_run(dataset: str, port: int) -> dict[str, Any]:
    """One simulation of ``<dataset>-dp-blend``: its side-by-side test figures and audit."""
    args = build_parser().parse_args(
        ["--preset", f"{dataset}-dp-blend", "--results", str(RUNS), "--port", str(port)]
    )
    started = time.perf_counter()
    summary = launch(args)
    folder = Path(summary["config"]["results-dir"])
    return {
        "run": folder.name,
        "epsilon": (summary.get("privacy") or {}).get("epsilon"),
        "audit_passed": json.loads((folder / "audit.json").read_text())["passed"],
        SIDE_BY_SIDE: {
            row: {key: summary[SIDE_BY_SIDE][row][key] for key in METRICS} for row in ROWS
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
    }


def statistics_only(dataset: str) -> dict[str, Any] | None:
    """The ``<dataset>-dp`` epsilon-8 point of ``privacy.json`` (the whole budget to the
    statistics), or None when it was not measured."""
    if not PRIVACY.is_file():
        return None
    data = json.loads(PRIVACY.read_text()).get("utility", {}).get(dataset, {})
    for point in data.get("points", []):
        if point["target_epsilon"] == 8.0:
            return {
                "preset": data["preset"],
                "runs": len(point["runs"]),
                **{m: {"mean": point[f"{m}_mean"], "std": point[f"{m}_std"]} for m in METRICS},
            }
    return None


def measure(dataset: str, repeats: int, port: int) -> dict[str, Any]:
    """``repeats`` blended runs of one data set, summarised beside the statistics-only point."""
    runs = [blended_run(dataset, port) for _ in range(repeats)]
    rows = {
        row: {m: spread([run[SIDE_BY_SIDE][row][m] for run in runs]) for m in METRICS}
        for row in ROWS
    }
    full = statistics_only(dataset)
    result: dict[str, Any] = {
        "preset": f"{dataset}-dp-blend",
        "runs": runs,
        "audits_passed": all(run["audit_passed"] for run in runs),
        "rows": rows,
        "statistics_only": full,
        "share_same_release": rows["blended"]["hr@10"]["mean"]
        - rows["scorer alone"]["hr@10"]["mean"],
        "share_same_epsilon": rows["blended"]["hr@10"]["mean"] - full["hr@10"]["mean"]
        if full
        else None,
        "model_over_popularity": rows["model alone"]["hr@10"]["mean"]
        / rows["popularity"]["hr@10"]["mean"],
    }
    return result


def print_table(results: dict[str, Any]) -> None:
    """Test HR@10 per data set: popularity, the parts, the blend, the whole-budget scorer."""
    print(f"{'data set':<8} {'popularity':>12} {'scorer alone':>16} {'model alone':>16} "
          f"{'blended':>16} {'statistics only':>16}")  # fmt: skip
    for dataset, data in results.items():
        cells = [
            f"{data['rows'][row]['hr@10']['mean']:.4f}±{data['rows'][row]['hr@10']['std']:.4f}"
            for row in ROWS
        ]
        full = data["statistics_only"]
        cells.append(f"{full['hr@10']['mean']:.4f}±{full['hr@10']['std']:.4f}" if full else "-")
        print(f"{dataset:<8} {cells[0]:>12} " + " ".join(f"{c:>16}" for c in cells[1:]))


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen data sets and merge them into ``model_share.json``."""
    unwind_on_sigterm()  # a SIGTERM stops the running simulation too
    parser = argparse.ArgumentParser(prog="python benchmarks/model_share.py", description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per data set")
    parser.add_argument("--port", type=int, default=39493)
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for dataset in args.datasets:
        results[dataset] = measure(dataset, args.repeats, args.port)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
