"""Flower ServerApp: builds the strategy from the run config and records every round.

Modes (docs/architecture.md has the legal combinations and their code paths):

- ``secure-aggregation = true``: :func:`server.secure_aggregation.run_secure_aggregation`
  (Flower's legacy SecAgg+ workflow);
- every other mode: :func:`run_strategy`, Flower's strategy wrapped by
  :func:`build_server_strategy`: cohort sums with user-level noise (``partition-mode =
  "cohort"``, ``dp = "user"``), reply screening with update decoding
  (``update-compression``) and round retries, budget refusals (``dp = "local"``); with
  ``statistics = true`` the DP global statistics are released first
  (:mod:`server.statistics_release`) and the on-device scorer evaluates (in a
  deployment, on the nodes: :mod:`server.scorer_evaluation`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from common.data.catalogue import ItemCatalogue
from common.federation.app_logging import configure_app_logging
from common.federation.checkpoints import ItemId, load_initial_checkpoint
from common.federation.config import FederatedConfig, config_of_run
from common.federation.messages import (
    LEDGER_RUN_ID,
    POPULATION_KEY,
    ROUND_OFFSET,
    SERVER_ROUND,
    STAGE,
    TRAIN_STAGE,
    VALID_STAGE,
    model_to_arrays,
)
from common.federation.run_model import run_model
from common.federation.strategies import build_strategy
from common.models import SequenceRecommender
from common.privacy.randomness import server_noise_source
from common.storage.run_lock import SERVER_LOCK, RunFolderLock
from common.training.local import round_seed
from server.budget_refusals import BudgetRefusals
from server.cohort_aggregation import CohortAggregation
from server.fault_tolerance import FaultLog, ReplyScreening, RoundFaults
from server.federated_evaluation import deployment_figures
from server.node_errors import ErrorRecordingGrid
from server.resume.keeper import RoundStateKeeper
from server.resume.restore import Resumption, resume_run
from server.resume.state import ResumeError
from server.run_recorder import RunRecorder, record_failure
from server.scorer_evaluation import ScorerEvaluation, released_scorer
from server.secure_aggregation import run_secure_aggregation
from server.server_view import ServerView, server_view
from server.statistics_release import release_statistics_round
from server.user_level_privacy import PrivacyBudgetSpent, UserLevelPrivacy, carry_ledger_forward

logger = logging.getLogger("fedseqrec.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train for ``num-server-rounds``, validating on every user, then test the best.

    Any failure is written to ``summary.json`` (status failed) before it propagates,
    because ``flwr run`` itself exits 0 either way; a refused ``resume-from`` is not, so
    that the folder it names (a completed run's, say) stays as it was, and neither is a
    folder another ServerApp holds (:class:`RunFolderBusy`: one writer per run folder).
    """
    configure_app_logging(logger)
    config = config_of_run(context.run_config, context.run_id)
    results_dir = Path(config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)  # plain `flwr run`: nobody made it yet
    logger.info("run %d writes to %s", context.run_id, results_dir)
    recording_grid = ErrorRecordingGrid(grid)
    with RunFolderLock(results_dir, SERVER_LOCK, "ServerApp"):  # RunFolderBusy: not ours
        try:
            run_federation(recording_grid, config, results_dir, context)
        except Exception as error:
            if not isinstance(error, ResumeError):  # a refused resume leaves its folder as it was
                record_failure(results_dir, error, recording_grid.errors)
            raise


@dataclass(frozen=True)
class RunSetup:
    """What every mode starts from: the data, the model, the recorder, the federation."""

    view: ServerView  # the public catalogue and population (+ users' data if simulated)
    model: SequenceRecommender
    recorder: RunRecorder
    num_partitions: int
    catalogue: dict[str, bytes]  # the item catalogue every message carries
    offset: int  # rounds of the checkpoint this run continues from
    resumption: Resumption | None = None  # the saved state of a killed run (resume-from)


def run_federation(
    grid: ErrorRecordingGrid, config: FederatedConfig, results_dir: Path, context: Context
) -> None:
    """Run all rounds in the config's mode (module docstring), then write the summary."""
    setup = prepare_run(config, results_dir)
    if config.secure_aggregation:
        run_secure_aggregation(grid, context, config, setup.recorder, setup.num_partitions)
        setup.recorder.finish(node_errors=grid.errors)
        return
    run_strategy(grid, config, setup, results_dir)


def prepare_run(config: FederatedConfig, results_dir: Path) -> RunSetup:
    """Seed, read what the server may know, build (or continue) the model and recorder.

    Every message carries the item catalogue, so that edge nodes can map their own
    click logs onto the model's items (:mod:`common.data.catalogue`).
    """
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(config.seed)
    view = server_view(config)
    num_partitions = config.federation_size(view.population)
    model = run_model(config, view.n_items, view.item_ids)
    cohorts = config.partition_mode == "cohort"
    catalogue = ItemCatalogue.from_ids(view.item_ids).to_config()
    offset = continue_from_checkpoint(config, model, view.item_ids)
    expected = max(int((view.population if cohorts else num_partitions) * config.fraction_train), 1)
    recorder = RunRecorder(results_dir, model, view.split, config, expected, view.item_ids, offset)
    resumption = resume_run(config, model, recorder) if config.resume_from else None
    logger.info(
        "%s: %d users, %d items, %d clients (%s), %d sampled per round",
        config.strategy, view.population, view.n_items, num_partitions, config.partition_mode,
        expected,
    )  # fmt: skip
    return RunSetup(view, model, recorder, num_partitions, catalogue, offset, resumption)


def build_server_strategy(
    config: FederatedConfig,
    setup: RunSetup,
    privacy: UserLevelPrivacy | None,
    fault_log: FaultLog | None = None,
) -> Strategy:
    """Flower's strategy wrapped for the mode: cohort sums, reply screening (which
    decodes compressed updates first), budget refusals (innermost first)."""
    recorder = setup.recorder
    flower_strategy = build_strategy(
        config, setup.num_partitions, recorder.aggregate_train, recorder.aggregate_evaluate
    )
    strategy: Strategy = flower_strategy
    if config.partition_mode == "cohort":
        strategy = CohortAggregation(
            flower_strategy,
            noise_multiplier=privacy.noise_multiplier if privacy else 0.0,
            clip_norm=config.clip_norm,
            expected_users=setup.view.population * config.fraction_train,
            noise_source=server_noise_source(
                config.insecure_reproducible_noise, config.seed, setup.offset
            ),
            before_round=privacy.check_round if privacy else None,
            on_release=privacy.record_round if privacy else None,
            on_witness=recorder.note_noise_witness if privacy else None,
        )
    strategy = screened(strategy, config, recorder, fault_log)  # decodes compressed replies
    if config.dp == "local":
        strategy = BudgetRefusals(strategy, recorder.note_refusals)
    return strategy


def screened(
    strategy: Strategy, config: FederatedConfig, recorder: RunRecorder, log: FaultLog | None
) -> ReplyScreening:
    """``strategy`` behind the reply checks, counting into ``log`` and ``metrics.csv``."""

    def on_round(faults: RoundFaults) -> None:
        if log is not None:
            log.record(faults)
        recorder.note_faults(len(faults.failures), len(faults.rejections))

    return ReplyScreening(
        strategy,
        min_replies=config.min_replies,
        on_round=on_round,
        validate=config.validate_updates,
        deltas=config.partition_mode == "cohort",
        max_update_norm=config.max_update_norm,
        compression=config.update_compression,
        retries=config.round_retries,
        timeout=config.round_timeout,
    )


def settings(setup: RunSetup, results_dir: Path, stage: str) -> dict[str, Any]:
    """What every message of a stage carries: the round offset, the run id of the ledger
    (for the nodes' receipts) and the item catalogue."""
    return {
        STAGE: stage,
        ROUND_OFFSET: setup.offset,
        LEDGER_RUN_ID: results_dir.name,
        **setup.catalogue,
    }


def run_strategy(
    grid: ErrorRecordingGrid, config: FederatedConfig, setup: RunSetup, results_dir: Path
) -> None:
    """The Message API path: every mode but secure aggregation."""
    privacy = (
        UserLevelPrivacy.from_config(
            config, setup.view.population, results_dir, round_offset=setup.offset
        )
        if config.dp == "user"
        else None
    )
    if config.statistics:  # before any round: validation and test use the scorer
        setup.recorder.on_device = release_statistics_round(
            grid, config, list(setup.view.item_ids), setup.catalogue, privacy, setup.offset,
            setup.num_partitions, simulated=setup.view.split is not None,
        )  # fmt: skip
    deployed = setup.view.split is None  # a deployment: the nodes evaluate
    scorer = released_scorer(config, results_dir) if config.statistics and deployed else None
    fault_log = FaultLog(results_dir)
    strategy = build_server_strategy(config, setup, privacy, fault_log)
    if scorer is not None:  # the nodes' federated validation uses the scorer too
        strategy = ScorerEvaluation(strategy, scorer)
    keeper = RoundStateKeeper(setup.recorder, strategy, config, setup.resumption, fault_log)
    stopped = ""
    try:
        keeper.strategy.start(
            grid=grid,
            initial_arrays=keeper.initial_arrays(),  # the saved ones when resuming
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
            train_config=ConfigRecord(
                {
                    **settings(setup, results_dir, TRAIN_STAGE),
                    POPULATION_KEY: setup.view.population,  # users protected: delta's rule
                    **(privacy.announcement() if privacy else {}),  # for the nodes' receipts
                }
            ),
            evaluate_config=ConfigRecord(settings(setup, results_dir, VALID_STAGE)),
            evaluate_fn=keeper.evaluate,  # the recorder's, then the state is saved
        )
    except PrivacyBudgetSpent as reason:
        stopped = str(reason)
        logger.warning("stopped: %s", stopped)
    figures = None
    if deployed:  # the nodes evaluate the released model (with the scorer, if any)
        released = setup.recorder.last_round - setup.offset  # the released model's round
        final = {**settings(setup, results_dir, VALID_STAGE), SERVER_ROUND: released}
        figures = deployment_figures(grid, model_to_arrays(setup.model), final, scorer)
    setup.recorder.finish(
        stopped=stopped,
        privacy=privacy.summary() if privacy else None,
        node_errors=grid.errors,
        federated=figures,
        faults=fault_log.summary(),
    )
    keeper.note_resumes()


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
    # the server ledger carries the earlier runs' releases forward: epsilon covers them all
    if not config.resume_from:  # a resumed run's ledger holds them already
        carry_ledger_forward(
            Path(config.initial_checkpoint), start.ledger, Path(config.results_dir)
        )
    random.seed(round_seed(config.seed, start.round, 0))
    logger.info("continuing from %s (round %d)", config.initial_checkpoint, start.round)
    return start.round
