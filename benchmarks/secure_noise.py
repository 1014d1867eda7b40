"""Cost of secret noise and sampling per round of Beauty user-level DP (``beauty-dp-model``).

``python benchmarks/secure_noise.py [--repeats 5]`` writes
``benchmarks/results/secure_noise.json``:

- ``round_seconds``: one cohort round of the ``beauty-dp-model`` preset on one edge aggregator
  (all 22,363 users, secret Poisson sampling of about 2,000, one clipped SGD step each),
  as :func:`common.training.cohort.train_cohort` runs it in a simulation;
- ``before``: what the seeded draws cost (numpy's PCG64 normal for the server's noise,
  ``random`` for the user sampling), ``after``: the secret ones
  (:mod:`common.privacy.randomness`: ChaCha20 keyed from ``os.urandom``, four normals
  summed and halved), both for the preset's model and for a 775k-coordinate item table
  (dim 64);
- ``share_of_round``: after / round, the issue's bar is at most 10%.

Medians over ``--repeats`` runs, and their spread (min, max).
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

from common.data.partitioning import load_partition, load_split
from common.federation.config import FederatedConfig
from common.models import build_model
from common.privacy.randomness import PrivacyRandomness
from common.training.cohort import train_cohort
from simulations.launch import app_defaults, load_preset, resolve_config

RESULTS = ROOT / "results" / "secure_noise.json"
TABLE_SHAPE = (12_102, 64)  # a Beauty item table at dim 64: 774,528 coordinates


def timed(action: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median, min and max seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return {
        "median": round(statistics.median(seconds), 4),
        "min": round(min(seconds), 4),
        "max": round(max(seconds), 4),
    }


def seeded_draws(shapes: list[tuple[int, ...]], n_users: int) -> None:
    """The old way: the server's noise from numpy's seeded generator, seeded sampling."""
    rng = np.random.default_rng([42, 1, 0xD9])
    for shape in shapes:
        rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    np.random.default_rng([42, 1, 0x5A3]).random(n_users)


def secret_draws(shapes: list[tuple[int, ...]], n_users: int) -> None:
    """The new way: a fresh ChaCha20 stream from OS entropy, Opacus-style noise sums."""
    randomness = PrivacyRandomness()
    for shape in shapes:
        randomness.gaussian(1.0, shape)
    PrivacyRandomness().poisson_mask(0.0894, n_users)


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    label, keys = load_preset("beauty-dp-model")
    config = FederatedConfig.from_run_config(resolve_config(app_defaults(), keys, {}, label))
    split = load_split(config.dataset)
    partition = load_partition(config.dataset, 1, 0, config.seed)
    model = build_model(config.model_config(), split.n_items)
    shapes = [tuple(p.shape) for p in model.state_dict().values()]
    coordinates = sum(int(np.prod(shape)) for shape in shapes)
    round_time = timed(
        lambda: train_cohort(model, partition, config, 1, split.n_users), args.repeats
    )
    result: dict[str, Any] = {
        "setup": f"beauty-dp-model preset: {split.n_users} users, {coordinates} model coordinates, "
        "one edge aggregator, one torch thread",
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), shared; "
        f"load average {os.getloadavg()[0]:.1f}",
        "round_seconds": round_time,
        "before": timed(lambda: seeded_draws(shapes, split.n_users), args.repeats),
        "after": timed(lambda: secret_draws(shapes, split.n_users), args.repeats),
        "table_775k_before": timed(lambda: seeded_draws([TABLE_SHAPE], 0), args.repeats),
        "table_775k_after": timed(lambda: secret_draws([TABLE_SHAPE], 0), args.repeats),
    }
    result["share_of_round"] = round(
        result["after"]["median"] / result["round_seconds"]["median"], 4
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
