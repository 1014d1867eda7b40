"""Flower ServerApp: builds the strategy from the run config and records every round."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.federated import (
    FederatedConfig,
    build_strategy,
    configure_app_logging,
    model_to_arrays,
)
from common.models import build_model
from common.partitioning import load_split
from server.run_recorder import RunRecorder, record_failure
from server.secure_aggregation import run_secure_aggregation

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
        run_federation(grid, config, results_dir, context)
    except Exception as error:
        record_failure(results_dir, error)
        raise


def run_federation(
    grid: Grid, config: FederatedConfig, results_dir: Path, context: Context
) -> None:
    """Build the model, strategy and recorder, run all rounds, write the summary."""
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(config.seed)
    split = load_split(config.dataset)
    num_partitions = config.num_partitions(split.n_users)
    model = build_model(config.model_config(), split.n_items)
    expected = max(int(num_partitions * config.fraction_train), 1)
    recorder = RunRecorder(results_dir, model, split, config, expected)
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
        recorder.finish()
        return
    strategy = build_strategy(
        config, num_partitions, recorder.aggregate_train, recorder.aggregate_evaluate
    )
    strategy.start(
        grid=grid,
        initial_arrays=model_to_arrays(model),
        num_rounds=config.num_server_rounds,
        train_config=ConfigRecord({"stage": "train"}),
        evaluate_config=ConfigRecord({"stage": "valid"}),
        evaluate_fn=recorder.evaluate,
    )
    recorder.finish()
