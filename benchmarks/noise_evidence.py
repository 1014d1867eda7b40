"""Noise evidence: false alarms on honest releases, and forged ledgers caught.

    python benchmarks/noise_evidence.py [--trials 100]

Writes ``benchmarks/results/noise_evidence.json``. For each kind of release, ``--trials``
fresh releases drawn by the real mechanism code with secret noise (no Flower simulation):

- ``statistics``: the ``beauty-dp`` preset's DP global statistics (epsilon 8, every
  user's contribution from the embedded Amazon Beauty data and attributes):
  :func:`common.privacy.statistics.noisy_release`, measured as the audit measures
  ``statistics.npz`` (:func:`common.privacy.release_evidence.statistics_measurements`);
- ``dp_fedavg``: one round of the ``ml100k-dp`` preset's DP-FedAvg aggregation
  (:meth:`server.cohort_aggregation.CohortAggregation.privatize` on the model's
  coordinates), its noise witness measured as the audit measures ``checkpoint.pt``.

Each release is measured against the honest claim (``honest_passed``: the audit's
false-alarm rate is 1e-6 per release, so all should pass), against a ledger claiming
twice the noise (``doubled_caught``) and 1.5 times (``raised_1_5_caught``);
``measured_over_claimed_honest`` spreads the honest measured / claimed std (for the
statistics, the smaller of the two statistics' per release).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import numpy as np
import torch
from flwr.serverapp.strategy import FedAvg

from common.data.attributes import load_item_attributes
from common.data.partitioning import load_split
from common.evaluation.on_device import attribute_lists
from common.federation.checkpoints import dataset_item_ids
from common.federation.config import FederatedConfig
from common.models import build_model
from common.privacy.budget_split import user_level_noise
from common.privacy.calibration import resolve_delta
from common.privacy.mechanism import WITNESS_SIZE
from common.privacy.noise_evidence import FALSE_ALARM_RATE, NoiseMeasurement, measure_noise
from common.privacy.release_evidence import round_noise_std, statistics_measurements
from common.privacy.statistics import exact_statistics, joint_noise_multiplier, noisy_release
from server.cohort_aggregation import CohortAggregation
from simulations.launch import app_defaults, load_preset, resolve_config

RESULTS = ROOT / "results" / "noise_evidence.json"
FORGERIES = {"doubled_caught": 2.0, "raised_1_5_caught": 1.5}
Measure = Callable[[float], list[NoiseMeasurement]]  # claim factor -> the audit's measurements


def preset_config(name: str) -> FederatedConfig:
    label, keys = load_preset(name)
    return FederatedConfig.from_run_config(resolve_config(app_defaults(), keys, {}, label))


def tally(trials: int, release: Callable[[], Measure]) -> dict[str, Any]:
    """Draw ``trials`` releases; count honest passes and forgeries caught; time a release."""
    counts = {"honest_passed": 0, **dict.fromkeys(FORGERIES, 0)}
    ratios, seconds = [], []
    for _ in range(trials):
        started = time.perf_counter()
        measure = release()
        seconds.append(time.perf_counter() - started)
        honest = measure(1.0)
        counts["honest_passed"] += all(m.passed for m in honest)
        ratios.append(min(m.measured_std / m.claimed_std for m in honest))
        for key, factor in FORGERIES.items():
            counts[key] += not all(m.passed for m in measure(factor))
    return {
        "trials": trials,
        **counts,
        "measured_over_claimed_honest": {
            "min": round(min(ratios), 4),
            "median": round(statistics.median(ratios), 4),
            "max": round(max(ratios), 4),
        },
        "seconds_per_release": round(statistics.median(seconds), 3),
    }


def statistics_releases(trials: int) -> dict[str, Any]:
    """The beauty-dp statistics release, ``trials`` times."""
    config = preset_config("beauty-dp")
    split = load_split(config.dataset)
    item_ids = dataset_item_ids(config.dataset)
    attributes = load_item_attributes(config.item_attributes, item_ids, config.dataset)
    assert attributes is not None
    lists, n_attributes = attribute_lists(attributes)
    delta = resolve_delta(config.delta, split.n_users)
    _, multipliers = user_level_noise(config, delta)
    sums = exact_statistics(split.inputs("test"), lists, n_attributes, config.transitions_per_user)
    joint = joint_noise_multiplier(multipliers)
    counts: dict[str, int] = {}

    def release() -> Measure:
        stats = noisy_release(*sums, multipliers)
        counts.update({name: len(stats.pure_noise(name)) for name in multipliers})
        return lambda factor: list(statistics_measurements(stats, factor * joint, 1.0).values())

    result = tally(trials, release)
    return {
        "preset": "beauty-dp",
        "users": split.n_users,
        "cells": int(sums[0].size + sums[1].size),
        "noise_multipliers": {name: round(z, 4) for name, z in multipliers.items()},
        "pure_noise_values": counts,
        **result,
    }


def dp_fedavg_releases(trials: int) -> dict[str, Any]:
    """One ml100k-dp DP-FedAvg aggregation (the model's coordinates), ``trials`` times."""
    config = preset_config("ml100k-dp")
    split = load_split(config.dataset)
    delta = resolve_delta(config.delta, split.n_users)
    noise, _ = user_level_noise(config, delta)
    model = build_model(config.model_config(), split.n_items)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    aggregation = CohortAggregation(FedAvg(), noise, config.clip_norm,
                                    split.n_users * config.fraction_train)  # fmt: skip
    claimed = round_noise_std(noise, config.clip_norm, split.n_users, config.fraction_train)

    def release() -> Measure:
        total = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        witness = aggregation.privatize(1, total)
        return lambda factor: [measure_noise(witness, factor * claimed)]

    return {
        "preset": "ml100k-dp",
        "coordinates": sum(int(np.prod(shape)) for shape in shapes.values()),
        "noise_multiplier": round(noise, 4),
        "expected_users": split.n_users * config.fraction_train,
        "witness_std_claimed": claimed,
        "pure_noise_values": WITNESS_SIZE,
        **tally(trials, release),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "false_alarm_rate_per_release": FALSE_ALARM_RATE,
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), shared; "
        f"load average {os.getloadavg()[0]:.1f}",
        "dp_fedavg": dp_fedavg_releases(args.trials),
        "statistics": statistics_releases(args.trials),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for kind in ("statistics", "dp_fedavg"):
        numbers = result[kind]
        print(f"{kind}: honest {numbers['honest_passed']}/{args.trials} passed, doubled noise "
              f"caught {numbers['doubled_caught']}/{args.trials}, 1.5x caught "
              f"{numbers['raised_1_5_caught']}/{args.trials}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
