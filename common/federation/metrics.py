"""Metric sums: evaluation travels as sums and counts, so the server aggregates exactly.

Sums and counts (:meth:`common.evaluation.ranking.RankingAccumulator.to_sums`) add up
over clients; the server turns the totals into means instead of averaging averages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import MetricRecord, RecordDict

from common.data.sequences import LeaveOneOutSplit
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.ranking import RankingAccumulator
from common.evaluation.scoring import (
    evaluate_scorer,
    evaluation_mode,
    flatten_metrics,
    model_scorer,
    on_device_scorer,
)
from common.federation.config import FederatedConfig
from common.federation.messages import WEIGHT_KEY
from common.models import SequenceRecommender

UNEXCLUDED_PREFIX = "unexcluded."


def evaluation_sums(
    model: SequenceRecommender,
    split: LeaveOneOutSplit,
    stage: str,
    config: FederatedConfig,
    on_device: OnDeviceScorer | None = None,
) -> dict[str, float]:
    """Metric sums (history excluded, and ``unexcluded.``-prefixed) plus ``num-examples``.

    With ``on_device`` (a run that released DP statistics) the figures are that scorer's,
    given the model's scores when its ``model_weight`` is not 0, as users get them.
    """
    with evaluation_mode(model):
        scorer = (
            on_device_scorer(on_device, model, config.max_len, config.n_gap_buckets)
            if on_device is not None
            else model_scorer(model, config.max_len, config.n_gap_buckets)
        )
        excluded, unexcluded = evaluate_scorer(scorer, split, stage)
    sums = excluded.to_sums()
    sums.update({UNEXCLUDED_PREFIX + key: value for key, value in unexcluded.to_sums().items()})
    sums[WEIGHT_KEY] = float(excluded.count)
    return sums


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Mean metrics (headline and ``_unexcluded`` twins) from aggregated sums."""
    excluded = RankingAccumulator.from_sums(
        {k: float(v) for k, v in sums.items() if not k.startswith(UNEXCLUDED_PREFIX)}
    )
    unexcluded = RankingAccumulator.from_sums(
        {
            k[len(UNEXCLUDED_PREFIX) :]: float(v)
            for k, v in sums.items()
            if k.startswith(UNEXCLUDED_PREFIX)
        }
    )
    return flatten_metrics(excluded, unexcluded)


def sum_metric_records(
    records: list[RecordDict], weighted_by_key: str = WEIGHT_KEY
) -> MetricRecord:
    """Add up every key of the replies' MetricRecords (Flower ``*_metrics_aggr_fn``)."""
    total: dict[str, float] = {}
    for record in records:
        for metrics in record.metric_records.values():
            for key, value in metrics.items():
                if isinstance(value, list):
                    raise ValueError(f"metric {key!r} is a list; only scalar sums can be added")
                total[key] = total.get(key, 0.0) + float(value)
    return MetricRecord(total)  # type: ignore[arg-type]
