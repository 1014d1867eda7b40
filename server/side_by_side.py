"""What the trained model adds: the released scorer's test figures beside its parts.

A simulation that released DP statistics AND weighs a trained model in the on-device
scorer (``scorer-model-weight`` not 0) reports, in ``summary.json`` ``side_by_side``,
the test figures of four ways to rank on the same release and the same model:

- ``popularity``: the non-private popularity baseline of the test inputs (a yardstick);
- ``scorer alone``: the on-device scorer over the run's statistics, model weight 0;
- ``model alone``: the released DP-trained model;
- ``blended``: the released scorer, what devices rank with (the summary's ``test``).

All four are computed by the simulation's measurement harness from every user's data,
like every figure of a simulation's summary (``simulation_only_diagnostics``): nothing
here is released, so nothing here is chosen by it. The launcher prints them in one
table (:func:`side_by_side_lines`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.data.sequences import LeaveOneOutSplit
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.scoring import evaluate_baselines, evaluate_model, evaluate_on_device
from common.federation.config import FederatedConfig
from common.models import SequenceRecommender

SIDE_BY_SIDE = "side_by_side"
ROWS = ("popularity", "scorer alone", "model alone", "blended")
STAGE = "test"


def side_by_side(
    scorer: OnDeviceScorer,
    model: SequenceRecommender,
    split: LeaveOneOutSplit,
    blended: Mapping[str, float],
    max_len: int,
    n_gap_buckets: int = 0,
) -> dict[str, dict[str, float]]:
    """Test figures of popularity, the scorer alone, the model alone and the blend.

    ``scorer`` is the test stage's released scorer and ``blended`` its test figures
    (already computed for the summary, so not scored twice).
    """
    alone = scorer.with_settings(dataclasses.replace(scorer.settings, model_weight=0.0))
    figures = {
        "popularity": evaluate_baselines(split, STAGE, ("popularity",))["popularity"],
        "scorer alone": evaluate_on_device(alone, model, split, STAGE, max_len, n_gap_buckets),
        "model alone": evaluate_model(model, split, STAGE, max_len, n_gap_buckets),
        "blended": dict(blended),
    }
    return {name: {k: float(v) for k, v in figures[name].items()} for name in ROWS}


def side_by_side_of(
    on_device: Mapping[str, OnDeviceScorer],
    model: SequenceRecommender,
    split: LeaveOneOutSplit | None,
    figures: Mapping[str, Mapping[str, float]],
    config: FederatedConfig,
) -> dict[str, Any]:
    """``{SIDE_BY_SIDE: ...}`` for a simulation whose released scorer weighs a trained
    model, else ``{}`` (a deployment, no release, or model weight 0). ``figures`` are the
    released scorer's figures per stage."""
    scorer = on_device.get(STAGE)
    if split is None or scorer is None or not scorer.settings.model_weight:
        return {}
    return {
        SIDE_BY_SIDE: side_by_side(
            scorer, model, split, figures[STAGE], config.max_len, config.n_gap_buckets
        )
    }


def side_by_side_lines(summary: Mapping[str, Any]) -> list[str]:
    """The summary's side-by-side figures as a small table (none when it has none)."""
    figures = summary.get(SIDE_BY_SIDE)
    if not figures:
        return []
    weight = summary.get("config", {}).get("scorer-model-weight", "?")
    lines = [
        f"test figures on the same release (model weight {weight} in the blend):",
        f"  {'ranking':<14} {'HR@10':>8} {'NDCG@10':>8}",
    ]
    for name in ROWS:
        row = figures[name]
        lines.append(f"  {name:<14} {row['hr@10']:>8.4f} {row['ndcg@10']:>8.4f}")
    return lines
