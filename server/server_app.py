"""Flower ServerApp: builds the strategy from the run config and records every round."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from common.data.catalogue import ItemCatalogue
from common.federation.app_logging import configure_app_logging
from common.federation.checkpoints import ItemId, load_initial_checkpoint
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.federation.strategies import build_strategy
from common.models import SequenceRecommender, build_model
from common.privacy.randomness import server_noise_source
from common.training.local import round_seed
from server.budget_refusals import BudgetRefusals
from server.cohort_aggregation import CohortAggregation
from server.federated_evaluation import deployment_figures
from server.node_errors import ErrorRecordingGrid
from server.run_recorder import RunRecorder, record_failure
from server.secure_aggregation import run_secure_aggregation
from server.server_view import server_view
from server.update_decoding import with_update_decoding
from server.user_level_privacy import PrivacyBudgetSpent, UserLevelPrivacy

logger = logging.getLogger("fedseqrec.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train for ``num-server-rounds``, validating on every user, then test the best.

    Any failure is written to ``summary.json`` (status failed) before it propagates,
    because ``flwr run`` itself exits 0 either way.
    """
    configure_app_logging(logger)
    config = FederatedConfig.from_run_config(context.run_config)
    results_dir = Path(config.results_dir)
    if not config.results_dir or not results_dir.is_absolute():
        raise ValueError(
            f"run-config key 'results-dir' must be an absolute folder, got {config.results_dir!r}"
        )
    recording_grid = ErrorRecordingGrid(grid)
    try:
        run_federation(recording_grid, config, results_dir, context)
    except Exception as error:
        record_failure(results_dir, error, recording_grid.errors)
        raise


def run_federation(
    grid: ErrorRecordingGrid, config: FederatedConfig, results_dir: Path, context: Context
) -> None:
    """Build the model, strategy and recorder, run all rounds, write the summary.

    Every message carries the item catalogue, so that edge nodes can map their own
    click logs onto the model's items (:mod:`common.data.catalogue`).
    """
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(config.seed)
    view = server_view(config)
    num_partitions = config.federation_size(view.population)
    model = build_model(config.model_config(), view.n_items)
    catalogue = ItemCatalogue.from_ids(view.item_ids).to_config()
    offset = continue_from_checkpoint(config, model, view.item_ids)
    cohorts = config.partition_mode == "cohort"
    expected = max(int((view.population if cohorts else num_partitions) * config.fraction_train), 1)
    recorder = RunRecorder(results_dir, model, view.split, config, expected, view.item_ids, offset)
    logger.info(
        "%s: %d users, %d items, %d clients (%s), %d sampled per round",
        config.strategy, view.population, view.n_items, num_partitions, config.partition_mode,
        expected,
    )  # fmt: skip
    if config.secure_aggregation:
        run_secure_aggregation(grid, context, config, recorder, num_partitions)
        recorder.finish(node_errors=grid.errors)
        return
    privacy = (
        UserLevelPrivacy.from_config(config, view.population, results_dir)
        if config.dp == "user"
        else None
    )
    strategy = build_server_strategy(config, num_partitions, view.population, recorder, privacy)
    stopped = ""
    try:
        strategy.start(
            grid=grid,
            initial_arrays=model_to_arrays(model),
            num_rounds=config.num_server_rounds,
            train_config=ConfigRecord({"stage": "train", "round-offset": offset, **catalogue}),
            evaluate_config=ConfigRecord({"stage": "valid", **catalogue}),
            evaluate_fn=recorder.evaluate,
        )
    except PrivacyBudgetSpent as reason:
        stopped = str(reason)
        logger.warning("stopped: %s", stopped)
    figures = (
        deployment_figures(
            grid,
            model_to_arrays(recorder.model),
            {"server-round": config.num_server_rounds, **catalogue},
        )
        if view.split is None
        else None
    )
    recorder.finish(
        stopped=stopped,
        privacy=privacy.summary() if privacy else None,
        node_errors=grid.errors,
        federated=figures,
    )


def build_server_strategy(
    config: FederatedConfig,
    num_partitions: int,
    population: int,
    recorder: RunRecorder,
    privacy: UserLevelPrivacy | None,
) -> Strategy:
    """Flower's strategy for the run config, wrapped for its mode.

    Cohorts: summed user updates, noised under user-level DP (:mod:`server.cohort_aggregation`);
    local DP: counting clients that refuse past their budget; otherwise per-client updates,
    decoded when compressed.
    """
    flower_strategy = build_strategy(
        config, num_partitions, recorder.aggregate_train, recorder.aggregate_evaluate
    )
    if config.partition_mode == "cohort":
        return CohortAggregation(
            flower_strategy,
            noise_multiplier=privacy.noise_multiplier if privacy else 0.0,
            clip_norm=config.clip_norm,
            expected_users=population * config.fraction_train,
            noise_source=server_noise_source(
                config.insecure_reproducible_noise, config.seed, recorder.round_offset
            ),
            before_round=privacy.check_round if privacy else None,
            on_release=privacy.record_round if privacy else None,
        )
    strategy: Strategy = with_update_decoding(flower_strategy, config.update_compression)
    if config.dp == "local":
        return BudgetRefusals(strategy, recorder.note_refusals)
    return strategy


def continue_from_checkpoint(
    config: FederatedConfig, model: SequenceRecommender, item_ids: list[ItemId]
) -> int:
    """Load ``initial-checkpoint`` (if set) into ``model``; returns its round (else 0).

    Continual learning: nodes whose logs grew since the last run go on improving the
    model it left. Node sampling is reseeded so the rounds do not repeat its samples.
    """
    if not config.initial_checkpoint:
        return 0
    start = load_initial_checkpoint(config.initial_checkpoint, config.model_config(), item_ids)
    model.load_state_dict(start.state_dict)
    random.seed(round_seed(config.seed, start.round, 0))
    logger.info("continuing from %s (round %d)", config.initial_checkpoint, start.round)
    return start.round
