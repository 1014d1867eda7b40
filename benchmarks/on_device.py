"""Privacy-utility of the on-device scorer on Beauty, Toys, Sports and ML-100k (issues 16, 24).

Per data set and user-level epsilon (1, 2, 4, 8 and no DP), with delta = 1 / (10 x users):

1. **Tuning, validation only.** One DP release from the training sequences (input =
   training history, target = validation item) on a fixed subset of ``--tune-users``
   evaluated users (seeded, public). Coordinate search, one pass, starting from
   :class:`ScorerSettings` defaults: ``similarity_weight`` in SIMILARITY_GRID, then
   ``transition_floor`` in FLOOR_GRID, then ``popularity_weight`` in POPULARITY_GRID,
   each time keeping the value with the best validation NDCG@10 (at most 7 settings).
   This is done once per ``transitions_per_user`` in ``--transitions-grid`` (a fresh
   release each: the statistic itself changes), keeping the best on validation.
   ``window`` 10, ``decay`` 0.8 and the budget shares (popularity 4 %, transitions 96 %)
   stay at their defaults, chosen in an exploration on Beauty validation at epsilon 8
   (decay 0.5 / 0.7 / 0.8 / 0.9 / 1.0 gave HR@10 0.053 / 0.056 / 0.056 / 0.054 / 0.050;
   1, 3 or 6 transitions per user 0.056 / 0.056 / 0.056). The Amazon rows of
   ``on_device.json`` predate the grid (``transitions_grid`` absent: 1 only); ML-100k's
   long histories (104 items on average) are where more transitions per user pay.
2. **Test, once per run.** ``--runs`` fresh releases (new secret noise each), each
   scored with the chosen settings on every evaluated user (input = train + validation
   item, target = last item), history excluded; mean and standard deviation reported.

Like the popularity and Markov baselines (``evaluate_baselines``), the statistics are
computed from the stage's input sequences: the training histories for validation,
training + validation item for test (never a stage's target). Each release is a separate
simulated deployment at that epsilon; a real deployment makes one. Writes
``benchmarks/results/on_device.json`` (data sets merged in) and prints a table. Run one
data set at a time on a shared machine: ``--datasets beauty``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.data.attributes import BUILTIN_SOURCE, load_item_attributes
from common.data.loaders import load_dataset
from common.data.sequences import LeaveOneOutSplit, build_sequences, leave_one_out_split
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings
from common.evaluation.scoring import evaluate_baselines, evaluate_scorer, flatten_metrics
from common.privacy.statistics import (
    DPStatistics,
    exact_statistics,
    noise_multipliers,
    noisy_release,
)

RESULTS = Path(__file__).resolve().parent / "results" / "on_device.json"
EPSILONS: tuple[float | None, ...] = (1.0, 2.0, 4.0, 8.0, None)
SIMILARITY_GRID = (2.0, 4.0, 8.0, 16.0)
FLOOR_GRID = (1e-3, 3e-3, 1e-2)
POPULARITY_GRID = (0.0, 0.05)
TRANSITIONS_GRID = (1, 5)  # transitions per user; one release and tuning pass each


def load_with_attributes(name: str) -> tuple[LeaveOneOutSplit, list[np.ndarray], int]:
    """The leave-one-out split of a built-in Amazon data set and its public item attributes."""
    dataset = build_sequences(load_dataset(name), name=name)
    attributes = load_item_attributes(BUILTIN_SOURCE, dataset.item_ids, name)
    assert attributes is not None
    # the loader numbers attributes 1..n (0 pads); the scorer wants 0..n - 1
    lists = [np.asarray(attributes.of(i), np.int64) - 1 for i in range(dataset.n_items + 1)]
    return leave_one_out_split(dataset), lists, attributes.n_attributes


def evaluate(
    scorer: OnDeviceScorer, split: LeaveOneOutSplit, stage: str, users: np.ndarray | None
) -> dict[str, float]:
    """Protocol metrics (history excluded, plus unexcluded twins) of the scorer on one stage."""
    return flatten_metrics(
        *evaluate_scorer(
            lambda histories, _times: scorer.batch_scores(histories), split, stage, users, 512
        )
    )


def _change(field: str, value: float) -> dict[str, Any]:
    """A ``dataclasses.replace`` keyword for one setting."""
    return {field: value}


def tune(
    make_scorer: Callable[[ScorerSettings], OnDeviceScorer],
    split: LeaveOneOutSplit,
    users: np.ndarray,
) -> tuple[ScorerSettings, list[dict]]:
    """One coordinate pass over the grids on validation NDCG@10; returns settings and the trail."""
    best = ScorerSettings()
    trail: list[dict] = []
    cache: dict[ScorerSettings, float] = {}

    def score(settings: ScorerSettings) -> float:
        if settings not in cache:
            metrics = evaluate(make_scorer(settings), split, "valid", users)
            cache[settings] = metrics["ndcg@10"]
            trail.append(
                {
                    **asdict(settings),
                    "valid_ndcg@10": metrics["ndcg@10"],
                    "valid_hr@10": metrics["hr@10"],
                }
            )
        return cache[settings]

    for field, grid in (
        ("similarity_weight", SIMILARITY_GRID),
        ("transition_floor", FLOOR_GRID),
        ("popularity_weight", POPULARITY_GRID),
    ):
        candidates = [replace(best, **_change(field, value)) for value in grid]
        best = max([best, *candidates], key=score)
    return best, trail


def scorer_factory(
    stats: DPStatistics, attributes: list[np.ndarray]
) -> Callable[[ScorerSettings], OnDeviceScorer]:
    """Settings -> scorer over one release (for the tuning search)."""
    return lambda settings: OnDeviceScorer.from_release(stats, attributes, settings)


def run_epsilon(
    split: LeaveOneOutSplit,
    attributes: tuple[list[np.ndarray], int],
    epsilon: float | None,
    runs: int,
    subset: np.ndarray,
    transitions_grid: tuple[int, ...],
) -> dict:
    """Tune on one release's validation scores per transitions-per-user value, keep the
    best, then test ``runs`` fresh releases with it."""
    delta = 1.0 / (10 * split.n_users)
    multipliers = noise_multipliers(epsilon, delta)
    tuned = []
    for per_user in transitions_grid:
        stats = noisy_release(*exact(split, "valid", attributes, per_user), multipliers)
        settings, trail = tune(scorer_factory(stats, attributes[0]), split, subset)
        best = max(row["valid_ndcg@10"] for row in trail)
        tuned.append((best, per_user, settings, [{**r, "transitions_per_user": per_user}
                                                  for r in trail], stats))  # fmt: skip
    _, per_user, settings, _, tuning_stats = max(tuned, key=lambda entry: entry[0])
    exact_test = exact(split, "test", attributes, per_user)
    tests = []
    for _run in range(runs if epsilon is not None else 1):  # no DP: nothing random
        stats = noisy_release(*exact_test, multipliers)
        tests.append(evaluate(scorer_factory(stats, attributes[0])(settings), split, "test", None))
    hr = [t["hr@10"] for t in tests]
    ndcg = [t["ndcg@10"] for t in tests]
    return {
        "epsilon_spent": tuning_stats.epsilon(delta),
        "noise_multipliers": multipliers,
        "transitions_per_user": per_user,
        "settings": asdict(settings),
        "tuning": [row for entry in tuned for row in entry[3]],
        "test_runs": tests,
        "hr@10_mean": float(np.mean(hr)),
        "hr@10_std": float(np.std(hr)),
        "ndcg@10_mean": float(np.mean(ndcg)),
        "ndcg@10_std": float(np.std(ndcg)),
    }


def exact(
    split: LeaveOneOutSplit, stage: str, attributes: tuple[list[np.ndarray], int], per_user: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact bounded sums over a stage's input sequences (never its targets)."""
    return exact_statistics(split.inputs(stage), attributes[0], attributes[1], per_user)


def run_dataset(
    name: str, runs: int, tune_users: int, transitions_grid: tuple[int, ...] = TRANSITIONS_GRID
) -> dict:
    """Baselines, then every epsilon of EPSILONS on one data set."""
    started = time.perf_counter()
    split, attributes, n_attributes = load_with_attributes(name)
    evaluated = split.evaluated_users()
    subset = np.sort(np.random.default_rng(0).permutation(evaluated)[:tune_users])
    result: dict = {
        "users": split.n_users,
        "items": split.n_items,
        "attributes": n_attributes,
        "delta": 1.0 / (10 * split.n_users),
        "transitions_grid": list(transitions_grid),
        "baselines": evaluate_baselines(split, "test"),
        "epsilons": {},
    }
    for epsilon in EPSILONS:
        key = "none" if epsilon is None else f"{epsilon:g}"
        row = run_epsilon(
            split, (attributes, n_attributes), epsilon, runs, subset, transitions_grid
        )
        result["epsilons"][key] = row
        print(
            f"{name} epsilon={key}: test HR@10 {row['hr@10_mean']:.4f} +- {row['hr@10_std']:.4f}"
            f" NDCG@10 {row['ndcg@10_mean']:.4f} transitions per user "
            f"{row['transitions_per_user']}, settings {row['settings']}",
            flush=True,
        )
    result["seconds"] = time.perf_counter() - started
    return result


def print_table(results: dict) -> None:
    """Test HR@10 (mean +- std over runs) per data set and epsilon, with the baselines."""
    print(f"{'data set':8} {'eps':>5} {'HR@10':>16} {'NDCG@10':>16}  popularity  markov")
    for name, data in results.items():
        base = data["baselines"]
        for key, row in data["epsilons"].items():
            print(
                f"{name:8} {key:>5} {row['hr@10_mean']:.4f} +- {row['hr@10_std']:.4f}"
                f"  {row['ndcg@10_mean']:.4f} +- {row['ndcg@10_std']:.4f}"
                f"  {base['popularity']['hr@10']:.4f}      {base['markov']['hr@10']:.4f}"
            )


def main(argv: list[str] | None = None) -> None:
    """Command line: data sets (built in), runs, tuning users."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="beauty,toys,sports")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tune-users", type=int, default=4000)
    parser.add_argument(
        "--transitions-grid", default=",".join(map(str, TRANSITIONS_GRID)),
        help="transitions-per-user values tried on validation (comma-separated)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    grid = tuple(int(value) for value in args.transitions_grid.split(","))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.datasets.split(","):
        results[name] = run_dataset(name, args.runs, args.tune_users, grid)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
