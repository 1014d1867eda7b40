"""Flower ServerApp: builds the strategy from the run config and records every round."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.checkpoints import ItemId, dataset_item_ids, load_initial_checkpoint
from common.federated import (
    FederatedConfig,
    build_strategy,
    configure_app_logging,
    model_to_arrays,
    round_seed,
)
from common.models import SequenceRecommender, build_model
from common.partitioning import load_split
from server.run_recorder import RunRecorder, record_failure
from server.update_decoding import with_update_decoding

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
    try:
        run_federation(grid, config, results_dir)
    except Exception as error:
        record_failure(results_dir, error)
        raise


def run_federation(grid: Grid, config: FederatedConfig, results_dir: Path) -> None:
    """Build the model, strategy and recorder, run all rounds, write the summary."""
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(config.seed)
    split = load_split(config.dataset)
    num_partitions = config.num_partitions(split.n_users)
    model = build_model(config.model_config(), split.n_items)
    item_ids = dataset_item_ids(config.dataset)
    offset = continue_from_checkpoint(config, model, item_ids)
    expected = max(int(num_partitions * config.fraction_train), 1)
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
    strategy = with_update_decoding(
        build_strategy(
            config, num_partitions, recorder.aggregate_train, recorder.aggregate_evaluate
        ),
        config.update_compression,
    )
    strategy.start(
        grid=grid,
        initial_arrays=model_to_arrays(model),
        num_rounds=config.num_server_rounds,
        train_config=ConfigRecord({"stage": "train", "round-offset": offset}),
        evaluate_config=ConfigRecord({"stage": "valid"}),
        evaluate_fn=recorder.evaluate,
    )
    recorder.finish()


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
