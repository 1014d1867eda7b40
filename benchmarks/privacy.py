"""Privacy-utility benchmark: test accuracy at user-level epsilon 1, 2, 4, 8 and without DP.

``python benchmarks/privacy.py [--only utility throughput] [--datasets beauty toys sports
ml-100k ml-100k-scorer] [--epsilons 1 2 4 8 none] [--repeats 3]``
writes ``benchmarks/results/privacy.json`` (sections and data sets merged into an existing
file) and ``benchmarks/results/privacy.png``:

- ``utility``: per data set, its ``<dataset>-dp`` preset (user-level DP, delta =
  1 / (10 x users), every user private) run ``--repeats`` times per target epsilon
  (the noise is secret, so every run differs) and once with ``dp = "none"`` (exact,
  deterministic); per run the test HR@10 / NDCG@10, the epsilon the run recorded and
  whether the independent audit of its run folder passed; per point the mean and the
  sample standard deviation. The popularity and Markov-chain baselines (test stage,
  history excluded) are computed on the same split for the plot's reference lines.
  ``beauty-dp``, ``toys-dp`` and ``sports-dp`` release DP global statistics for the
  on-device scorer; ``ml100k-dp`` trains a DP-FedAvg model, and the entry
  ``ml-100k-scorer`` runs ``ml100k-dp-scorer``: ML-100k's statistics and scorer, with
  u.item's genres and release spans as the public attributes.
- ``throughput``: training examples per second of Opacus DP-SGD (local DP) against
  plain training of the same model on the same ML-100k windows.

Every utility point is a real simulation through :mod:`simulations.launch`.
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from common.data.features import training_windows
from common.data.partitioning import load_split
from common.evaluation.scoring import evaluate_baselines
from common.federation.config import FederatedConfig
from common.models import MODEL_NAMES, build_model
from common.privacy.randomness import PrivacyRandomness
from common.training.dp_sgd import train_local_dp
from common.training.local import train_local
from simulations.launch import build_parser, launch, unwind_on_sigterm

RESULTS = ROOT / "results" / "privacy.json"
RUNS = ROOT / "runs"
MODEL_SHARE = ROOT / "results" / "model_share.json"  # benchmarks/model_share.py
EPSILONS = (1.0, 2.0, 4.0, 8.0)
THROUGHPUT_REPEATS = 7  # one epoch takes well under a second: medians of several
PRESETS = {"beauty": "beauty-dp", "toys": "toys-dp", "sports": "sports-dp",
           "ml-100k": "ml100k-dp", "ml-100k-scorer": "ml100k-dp-scorer"}  # fmt: skip
DATASET_OF = {"ml-100k-scorer": "ml-100k"}  # entries named apart from their data set
THROUGHPUT = {"dim": 64, "layers": 1,
              "max-len": 50, "batch-size": 64, "lr": 0.01, "optimizer": "sgd",
              "dropout": 0.0}  # fmt: skip


def utility_point(dataset: str, epsilon: float | None, port: int) -> dict[str, Any]:
    """One simulation of the data set's DP preset at ``epsilon`` (None: no DP)."""
    overrides = [f"target-epsilon={epsilon}"] if epsilon else ['dp="none"']
    args = build_parser().parse_args(
        ["--preset", PRESETS[dataset], "--results", str(RUNS), "--port", str(port)]
        + [f"--set={item}" for item in overrides]
    )
    started = time.perf_counter()
    summary = launch(args)
    privacy = summary.get("privacy") or {}
    audit_file = Path(summary["config"]["results-dir"]) / "audit.json"
    return {
        "target_epsilon": epsilon,
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "rounds": summary["rounds"],
        "stopped_early": summary.get("stopped_early"),
        "audit_passed": json.loads(audit_file.read_text())["passed"] if epsilon else None,
        "test": {key: summary["test"][key] for key in ("hr@10", "ndcg@10")},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def utility(dataset: str, port: int, epsilons: list[float | None], repeats: int) -> dict[str, Any]:
    """The chosen epsilons (None: no DP, one run) on one data set, with its baselines."""
    points = []
    for epsilon in epsilons:
        runs = [utility_point(dataset, epsilon, port) for _ in range(repeats if epsilon else 1)]
        point: dict[str, Any] = {"target_epsilon": epsilon, "runs": runs}
        for metric in ("hr@10", "ndcg@10"):
            values = [run["test"][metric] for run in runs]
            point[f"{metric}_mean"] = float(np.mean(values))
            point[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        point["audits_passed"] = all(run["audit_passed"] for run in runs) if epsilon else None
        points.append(point)
        print(json.dumps({dataset: {k: v for k, v in point.items() if k != "runs"}}))
    split = load_split(DATASET_OF.get(dataset, dataset))
    baselines = {name: {key: figures[key] for key in ("hr@10", "ndcg@10")}
                 for name, figures in evaluate_baselines(split, "test").items()}  # fmt: skip
    return {"preset": PRESETS[dataset], "repeats": repeats, "baselines": baselines,
            "points": points}  # fmt: skip


def examples_per_second(name: str, private: bool) -> float:
    """Training examples per second of one model, plain or with Opacus DP-SGD."""
    config = FederatedConfig.from_run_config({**THROUGHPUT, "model": name})
    split = load_split("ml-100k")
    windows = training_windows(split.train[:300], config.max_len, n_gap_buckets=0)
    examples = int((windows.targets > 0).sum())
    torch.manual_seed(0)
    model = build_model(config.model_config(), split.n_items)
    started = time.perf_counter()
    if private:
        train_local_dp(
            model, windows, epochs=1, batch_size=config.batch_size, lr=config.lr,
            optimizer_name="sgd", noise_multiplier=1.0, clip_norm=1.0, seed=0,
            randomness=PrivacyRandomness(),
        )  # fmt: skip
    else:
        train_local(model, windows, config, seed=0)
    return examples / (time.perf_counter() - started)


def throughput() -> dict[str, Any]:
    """DP-SGD examples per second relative to plain training, per model."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = {}
    for name in MODEL_NAMES:
        # alternate plain and private, 7 of each, so drift in machine speed hits both alike
        pairs = [(examples_per_second(name, False), examples_per_second(name, True))
                 for _ in range(THROUGHPUT_REPEATS)]  # fmt: skip
        plain = float(np.median([pair[0] for pair in pairs]))
        private = float(np.median([pair[1] for pair in pairs]))
        rows[name] = {
            "plain_examples_per_s": round(plain, 1),
            "dp_sgd_examples_per_s": round(private, 1),
            "ratio": round(private / plain, 3),
        }
        print(name, rows[name])
    return {"settings": THROUGHPUT, "repeats": THROUGHPUT_REPEATS, "models": rows}


def plot(results: dict[str, Any]) -> None:
    """Test HR@10 (mean, spread) against user-level epsilon per data set, with the baselines
    and, where ``model_share.json`` has them, the blend and the DP model alone at epsilon 8."""
    utility = {name: data for name, data in results.get("utility", {}).items()
               if isinstance(data, dict) and "points" in data}  # fmt: skip
    if not utility:
        return
    shares = json.loads(MODEL_SHARE.read_text()) if MODEL_SHARE.is_file() else {}
    figure, axes = plt.subplots(1, len(utility), figsize=(4.2 * len(utility), 3.6), squeeze=False)
    for axis, (dataset, data) in zip(axes[0], utility.items(), strict=True):
        private = [p for p in data["points"] if p["target_epsilon"]]
        xs = [p["target_epsilon"] for p in private]
        axis.errorbar(xs, [p["hr@10_mean"] for p in private],
                      yerr=[p["hr@10_std"] for p in private], marker="o", capsize=3,
                      label=f"{data['preset']} (mean, sd)")  # fmt: skip
        blended = shares.get(dataset, {})  # the model_share.py ablation: one budget, epsilon 8
        for row, marker in (("blended", "s"), ("model alone", "^")) if blended else ():
            figures = blended["rows"][row]["hr@10"]
            axis.errorbar(
                [8.0], [figures["mean"]], yerr=[figures["std"]], marker=marker,
                linestyle="none", capsize=3, label=f"{blended['preset']}: {row}",
            )  # fmt: skip
        exact = [p for p in data["points"] if not p["target_epsilon"]]
        if exact:
            axis.axhline(exact[0]["hr@10_mean"], color="C2", linestyle="-.", label="no DP")
        for style, (name, figures) in zip(("--", ":"), data["baselines"].items(), strict=False):
            axis.axhline(figures["hr@10"], color="grey", linestyle=style, label=name)
        axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [f"{x:g}" for x in xs])
        axis.set_xlabel("user-level epsilon")
        axis.set_title(f"{dataset}: test HR@10")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(ROOT / "results" / "privacy.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and merge them into ``privacy.json``."""
    unwind_on_sigterm()  # a SIGTERM stops the running simulation too
    parser = argparse.ArgumentParser(prog="python benchmarks/privacy.py", description=__doc__)
    parser.add_argument("--only", nargs="+", default=["utility", "throughput"],
                        choices=["utility", "throughput"])  # fmt: skip
    parser.add_argument("--datasets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per DP point (the no-DP point runs once)")  # fmt: skip
    parser.add_argument("--epsilons", nargs="+", default=[*map(str, EPSILONS), "none"],
                        help="target epsilons to run, 'none' for no DP (default: all)")  # fmt: skip
    parser.add_argument("--port", type=int, default=39491)
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "throughput" in args.only:
        results["throughput"] = throughput()
        write(results)
    if "utility" in args.only:
        results.setdefault("utility", {})
        epsilons = [None if value == "none" else float(value) for value in args.epsilons]
        for dataset in args.datasets:
            measured = utility(dataset, args.port, epsilons, args.repeats)
            earlier = results["utility"].get(dataset)
            same = isinstance(earlier, dict) and earlier.get("preset") == measured["preset"]
            kept = (
                [p for p in earlier["points"] if p["target_epsilon"] not in epsilons]
                if same
                else []
            )
            measured["points"] = sorted(
                kept + measured["points"], key=lambda p: p["target_epsilon"] or float("inf")
            )
            results["utility"][dataset] = measured
            write(results)
    plot(results)
    return 0


def write(results: dict[str, Any]) -> None:
    """Write the results file (sections are kept between partial runs)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
