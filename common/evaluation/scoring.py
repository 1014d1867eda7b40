"""Full-ranking evaluation of a model or a baseline on every evaluated user of a split."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from common.data.features import last_window
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.baselines import MarkovChain, PopularityBaseline
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.ranking import (
    RankingAccumulator,
    long_horizon_hits,
    n_candidates,
    target_ranks,
)
from common.models.base import SequenceRecommender

UNEXCLUDED_SUFFIX = "_unexcluded"
Scorer = Callable[[list[np.ndarray], list[np.ndarray] | None], Tensor]


def evaluate_scorer(
    scorer: Scorer,
    split: LeaveOneOutSplit,
    stage: str,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
) -> tuple[RankingAccumulator, RankingAccumulator]:
    """Rank each user's target with and without history exclusion.

    ``scorer(histories, times)`` returns (B, n_items + 1) scores for a batch of users'
    input sequences. Returns (history excluded, unexcluded) accumulators holding sums, so
    results from several clients or batches merge exactly.
    """
    inputs = split.inputs(stage)
    times = split.input_times(stage)
    targets = split.targets(stage)
    if users is None:
        users = split.evaluated_users()
    excluded, unexcluded = RankingAccumulator(), RankingAccumulator()
    everyone = torch.full((1,), split.n_items)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        histories = [inputs[u] for u in batch]
        batch_times = [times[u] for u in batch] if times is not None else None
        target = torch.as_tensor(targets[batch])
        with torch.no_grad():
            scores = scorer(histories, batch_times)
        excluded.add(
            target_ranks(scores, target, histories),
            n_candidates(split.n_items, target, histories),
        )
        unexcluded.add(target_ranks(scores, target, None), everyone.expand(len(batch)))
    return excluded, unexcluded


def flatten_metrics(excluded: RankingAccumulator, unexcluded: RankingAccumulator) -> dict:
    """One flat dict: headline (history excluded) keys plus ``*_unexcluded`` twins."""
    metrics = dict(excluded.result())
    for key, value in unexcluded.result().items():
        if key != "count":
            metrics[key + UNEXCLUDED_SUFFIX] = value
    return metrics


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then the model's previous mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_scorer(model: SequenceRecommender, max_len: int, n_gap_buckets: int) -> Scorer:
    """Adapt a SequenceRecommender to the scorer interface (eval mode, last window).

    Inputs go to the model's device; scores come back on the CPU, where ranking runs.
    """
    device = model.items.weight.device

    def score(histories: list[np.ndarray], times: list[np.ndarray] | None) -> Tensor:
        items, gaps = last_window(histories, max_len, times, n_gap_buckets)
        gap_tensor = torch.as_tensor(gaps, device=device) if gaps is not None else None
        return model.scores(torch.as_tensor(items, device=device), gap_tensor).cpu()

    return score


def evaluate_model(
    model: SequenceRecommender,
    split: LeaveOneOutSplit,
    stage: str,
    max_len: int,
    n_gap_buckets: int = 0,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Headline and unexcluded full-ranking metrics of a model on one stage."""
    with evaluation_mode(model):
        scorer = model_scorer(model, max_len, n_gap_buckets)
        return flatten_metrics(*evaluate_scorer(scorer, split, stage, users, batch_size))


def evaluate_on_device(
    scorer: OnDeviceScorer,
    model: SequenceRecommender,
    split: LeaveOneOutSplit,
    stage: str,
    max_len: int,
    n_gap_buckets: int = 0,
) -> dict[str, float]:
    """Metrics of the on-device scorer, with the model's scores when it weighs them."""
    with evaluation_mode(model):
        score = on_device_scorer(scorer, model, max_len, n_gap_buckets)
        return flatten_metrics(*evaluate_scorer(score, split, stage))


def on_device_scorer(
    scorer: OnDeviceScorer, model: SequenceRecommender, max_len: int, n_gap_buckets: int = 0
) -> Scorer:
    """The on-device scorer as a batch scorer, fed the model's scores when it weighs them
    (call inside :func:`evaluation_mode`); the model is not run when its weight is 0."""
    global_model = (
        model_scorer(model, max_len, n_gap_buckets) if scorer.settings.model_weight else None
    )

    def score(histories: list[np.ndarray], times: list[np.ndarray] | None) -> Tensor:
        model_scores = global_model(histories, times) if global_model else None
        return scorer.batch_scores(histories, model_scores)

    return score


def baseline_scorer(baseline: PopularityBaseline | MarkovChain) -> Scorer:
    """Adapt a fitted popularity or Markov-chain baseline to the scorer interface."""

    def score(histories: list[np.ndarray], times: list[np.ndarray] | None) -> Tensor:
        last = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)
        return baseline.scores(last)

    return score


def evaluate_baselines(
    split: LeaveOneOutSplit, stage: str, names: Sequence[str] = ("popularity", "markov")
) -> dict[str, dict[str, float]]:
    """Popularity and first-order Markov chain (or those in ``names``), fitted on the
    stage's input sequences."""
    inputs = split.inputs(stage)
    results = {}
    kinds: dict[str, type[PopularityBaseline] | type[MarkovChain]] = {
        "popularity": PopularityBaseline, "markov": MarkovChain,
    }  # fmt: skip
    for name in names:
        baseline = kinds[name]()
        baseline.fit(inputs, split.n_items)
        results[name] = flatten_metrics(*evaluate_scorer(baseline_scorer(baseline), split, stage))
    return results


def evaluate_long_horizon(
    model: SequenceRecommender,
    split: LeaveOneOutSplit,
    max_len: int,
    k: int = 10,
    n_gap_buckets: int = 0,
    batch_size: int = 1024,
) -> float:
    """Share of users whose top-k list, given the training history, holds either of the
    next two items (validation and test targets): the long-horizon view (H = 2).

    Both future items are held out from training, so nothing here was seen as a target.
    History items are excluded from the list, as in the headline metrics.
    """
    users = split.evaluated_users()
    scorer = model_scorer(model, max_len, n_gap_buckets)
    times = split.input_times("valid")
    hits = 0
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            histories = [split.train[u] for u in batch]
            batch_times = [times[u] for u in batch] if times is not None else None
            futures = [np.array([split.valid_target[u], split.test_target[u]]) for u in batch]
            scores = scorer(histories, batch_times)
            hits += int(long_horizon_hits(scores, futures, k, histories).sum())
    return hits / max(len(users), 1)
