"""On-device fine-tuning: does adapting the released model to a user's own history help?

``python benchmarks/fine_tune.py RUN_DIR [--users 4000]`` (RUN_DIR: a finished run of a
``*-dp-blend`` preset, e.g. under ``benchmarks/runs/``) writes
``benchmarks/results/fine_tune.json`` and prints a table.

What a device may do for free (nothing leaves it): before ranking, adapt the released
model to its own history. Here the device learns one offset vector added to the model's
output state, by a few steps of gradient descent on its own next-item loss (every
prefix of its training history predicting the item after it; the released weights stay
frozen, an L2 pull keeps the offset small), then ranks with the adapted state. Every
user adapts alone: a batch of users is just many devices at once (the loss is a sum
over users and each offset sees only its own user's terms).

Measured on validation only (input: the training history, target: the validation item)
for ``--users`` seeded users, model alone and blended with the on-device scorer over a
harness-only release of the training sequences at the run's noise (as the simulation's
validation figures are). Settings: ``STEPS`` x ``LEARNING_RATES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import numpy as np
import torch
from torch import Tensor

from benchmarks.on_device import load_with_attributes
from common.data.features import last_window
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.scorer_files import read_scorer_json
from common.evaluation.scoring import evaluate_scorer, evaluation_mode, flatten_metrics
from common.federation.checkpoints import load_checkpoint
from common.models import SequenceRecommender
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import DPStatistics, exact_statistics, noisy_release

RESULTS = ROOT / "results" / "fine_tune.json"
STEPS = (0, 5, 20)
LEARNING_RATES = (0.3, 1.0, 3.0)
L2 = 0.01
BATCH = 256


def adapted_states(
    model: SequenceRecommender, items: Tensor, steps: int, lr: float, l2: float = L2
) -> Tensor:
    """Each row's last output state plus its own offset, fitted on its own prefixes."""
    with torch.no_grad():
        hidden = model(items)
    last = hidden[:, -1]
    if not steps:
        return last
    inputs, targets = items[:, :-1], items[:, 1:]
    mask = (inputs > 0) & (targets > 0)
    states, labels = hidden[:, :-1][mask], targets[mask] - 1  # logits column j: item j + 1
    rows = mask.nonzero()[:, 0]
    per_row = torch.bincount(rows, minlength=len(items)).clamp(min=1).float()
    offset = torch.zeros_like(last, requires_grad=True)
    with torch.enable_grad():
        for _ in range(steps):
            logits = model.item_logits(states + offset[rows])
            losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            loss = (losses / per_row[rows]).sum() + l2 * offset.square().sum()
            (gradient,) = torch.autograd.grad(loss, offset)
            with torch.no_grad():
                offset -= lr * gradient
    return last + offset.detach()


def scorer_for(
    model: SequenceRecommender, max_len: int, steps: int, lr: float, blend: OnDeviceScorer | None
) -> Any:
    """A batch scorer: the adapted model alone, or blended into the on-device scorer."""

    def score(histories: list[np.ndarray], _times: Any) -> Tensor:
        items, _ = last_window(histories, max_len, None, 0)
        states = adapted_states(model, torch.as_tensor(items), steps, lr)
        with torch.no_grad():
            logits = model.item_logits(states)
        scores = torch.cat([torch.full((len(histories), 1), -float("inf")), logits], dim=1)
        return blend.batch_scores(histories, scores) if blend is not None else scores

    return score


def main(argv: list[str] | None = None) -> int:
    """Measure every setting on validation and write ``fine_tune.json``."""
    parser = argparse.ArgumentParser(prog="python benchmarks/fine_tune.py", description=__doc__)
    parser.add_argument("run", type=Path, help="a finished *-dp-blend run folder")
    parser.add_argument("--users", type=int, default=4000, help="seeded validation users")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = json.loads((args.run / "config.json").read_text())["run_config"]
    split, lists, n_attributes = load_with_attributes(config["dataset"])
    model = load_checkpoint(args.run / "checkpoint.pt").build_model()
    settings, _, _ = read_scorer_json(args.run / "scorer.json")
    released = DPStatistics.load(args.run / "statistics.npz")
    harness = noisy_release(
        *exact_statistics(split.inputs("valid"), lists, n_attributes),
        released.noise_multipliers,
        PrivacyRandomness(),
    )  # the validation stage's release, as the simulation's harness makes it
    blend = OnDeviceScorer.from_release(harness, lists, settings)
    alone = blend.with_settings(dataclasses.replace(settings, model_weight=0.0))
    users = np.random.default_rng(0).permutation(split.evaluated_users())[: args.users]
    rows: list[dict[str, Any]] = []
    with evaluation_mode(model):
        base = flatten_metrics(
            *evaluate_scorer(lambda h, _t: alone.batch_scores(h), split, "valid", users, BATCH)
        )
        for steps in STEPS:
            for lr in LEARNING_RATES if steps else (0.0,):
                row: dict[str, Any] = {"steps": steps, "lr": lr}
                for name, mixed in (("model alone", None), ("blended", blend)):
                    score = scorer_for(model, config["max-len"], steps, lr, mixed)
                    metrics = flatten_metrics(*evaluate_scorer(score, split, "valid", users, BATCH))
                    row[name] = {key: metrics[key] for key in ("hr@10", "ndcg@10")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "run": str(args.run),
        "users": int(len(users)),
        "l2": L2,
        "scorer alone": {key: base[key] for key in ("hr@10", "ndcg@10")},
        "settings": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
