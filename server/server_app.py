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
from common.data.partitioning import load_split
from common.federation.app_logging import configure_app_logging
from common.federation.checkpoints import ItemId, dataset_item_ids, load_initial_checkpoint
from common.federation.config import FederatedConfig
from common.federation.messages import POPULATION_KEY, model_to_arrays
from common.federation.strategies import build_strategy
from common.models import SequenceRecommender, build_model
from common.training.local import round_seed
from server.budget_refusals import BudgetRefusals
from server.cohort_aggregation import CohortAggregation
from server.node_errors import ErrorRecordingGrid
from server.run_recorder import RunRecorder, record_failure
from server.secure_aggregation import run_secure_aggregation
from server.update_decoding import with_update_decoding
from server.user_level_privacy import PrivacyBudgetSpent, UserLevelPrivacy, carry_ledger_forward

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
    split = load_split(config.dataset)
    num_partitions = config.federation_size(split.n_users)
    model = build_model(config.model_config(), split.n_items)
    cohorts = config.partition_mode == "cohort"
    item_ids = dataset_item_ids(config.dataset)
    catalogue = ItemCatalogue.from_ids(item_ids).to_config()
    offset = continue_from_checkpoint(config, model, item_ids)
    expected = max(int((split.n_users if cohorts else num_partitions) * config.fraction_train), 1)
    recorder = RunRecorder(results_dir, model, split, config, expected, item_ids, offset)
    logger.info(
        "%s on %s: %d users, %d items, %d clients (%s), %d sampled per round",
        config.strategy,
        config.dataset,
        split.n_users,
        split.n_items,
        num_partitions,
        config.partition_mode,
        expected,
    )
    if config.secure_aggregation:
        run_secure_aggregation(grid, context, config, recorder, num_partitions)
        recorder.finish(node_errors=grid.errors)
        return
    flower_strategy = build_strategy(
        config, num_partitions, recorder.aggregate_train, recorder.aggregate_evaluate
    )
    strategy: Strategy = with_update_decoding(flower_strategy, config.update_compression)
    privacy = (
        UserLevelPrivacy.from_config(config, split.n_users, results_dir, round_offset=offset)
        if config.dp == "user"
        else None
    )
    if cohorts:
        strategy = CohortAggregation(
            flower_strategy,
            noise_multiplier=privacy.noise_multiplier if privacy else 0.0,
            clip_norm=config.clip_norm,
            expected_users=split.n_users * config.fraction_train,
            seed=config.seed,
            before_round=privacy.check_round if privacy else None,
            on_release=privacy.record_round if privacy else None,
        )
    if config.dp == "local":
        strategy = BudgetRefusals(strategy, recorder.note_refusals)
    stopped = ""
    try:
        strategy.start(
            grid=grid,
            initial_arrays=model_to_arrays(model),
            num_rounds=config.num_server_rounds,
            train_config=ConfigRecord(  # ledger (14.4): POPULATION_KEY, delta's users protected
                {
                    "stage": "train",
                    "round-offset": offset,
                    POPULATION_KEY: split.n_users,
                    **catalogue,
                }
            ),
            evaluate_config=ConfigRecord({"stage": "valid", **catalogue}),
            evaluate_fn=recorder.evaluate,
        )
    except PrivacyBudgetSpent as reason:
        stopped = str(reason)
        logger.warning("stopped: %s", stopped)
    recorder.finish(
        stopped=stopped,
        privacy=privacy.summary() if privacy else None,
        node_errors=grid.errors,
    )


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
    # ledger (14.6): the server ledger carries the earlier runs' releases forward
    carry_ledger_forward(Path(config.initial_checkpoint), start.ledger, Path(config.results_dir))
    random.seed(round_seed(config.seed, start.round, 0))
    logger.info("continuing from %s (round %d)", config.initial_checkpoint, start.round)
    return start.round
