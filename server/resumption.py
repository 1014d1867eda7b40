"""Resume a killed run in its own folder (run-config ``resume-from``), and keep its state.

:class:`RoundStateKeeper` wraps the recorder's ``evaluate_fn``: after each round's
checkpoint and metrics row it saves the server's state (:mod:`server.run_state`).
:func:`resume_run` reads that state back into a new ServerApp started on the same run
folder and config: the model and best checkpoint of the last saved round, the server
optimizer, the RNG states, ``metrics.csv`` cut back to that round's rows, and (given the
run's :class:`FaultLog`) the failure totals, with ``rejections.csv`` cut back to them.

The ledger rule: every ledger entry counts. A kill can land after a round's release was
recorded (the ledger comes first, DESIGN.md) and before its state was saved; that model
may have left, so its entry stays and its epsilon is spent. The resumed run trains on
from the last saved model but numbers its rounds after the last round any ledger of this
run records, so no round is released or recorded twice and no release is forgotten; the
rounds in between are listed as lost in ``summary.json``'s ``resumed``. Without a ledger
(no DP) nothing is lost: the run continues right after the saved round.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.checkpoints import CheckpointError, load_checkpoint
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import SequenceRecommender
from common.privacy.ledger import read_ledger_file
from common.privacy.ledger_heads import LEDGER_FOLDER, ledger_heads
from common.storage.atomic import write_text_atomically
from common.storage.run_folder import write_json
from server.fault_tolerance import FaultLog
from server.run_recorder import BEST_CHECKPOINT, CHECKPOINT, RunRecorder
from server.run_state import (
    STATE_FOLDER,
    ResumeError,
    ServerState,
    keep_file,
    load_server_state,
    optimizer_state,
    random_states,
    restore_optimizer,
    restore_random_states,
    save_server_state,
)
from server.strategy_wrapper import StrategyWrapper

logger = logging.getLogger("fedseqrec.server")
METRICS = "metrics.csv"
SUMMARY = "summary.json"
RESUME_KEY = "resume-from"


@dataclass(frozen=True)
class Resumption:
    """A saved state read back, and the Flower rounds already done before the kill."""

    state: ServerState
    skip_through: int  # Flower rounds 0..skip_through are done (or released): skipped


def run_config_of(config: FederatedConfig) -> dict[str, Any]:
    """The run config a state is saved with and compared against (``resume-from`` aside)."""
    settings = config.to_run_config()
    settings.pop(RESUME_KEY, None)
    return settings


def resume_run(
    config: FederatedConfig, model: SequenceRecommender, recorder: RunRecorder
) -> Resumption:
    """Load the state of ``resume-from`` into the model and recorder; repair the folder."""
    folder = Path(config.results_dir)
    _check_resumable(config, folder)
    state = load_server_state(folder)
    _check_same_run(config, state, folder, recorder.round_offset)
    try:
        checkpoint = load_checkpoint(folder / STATE_FOLDER / state.model_file)
    except CheckpointError as error:
        raise ResumeError(str(error)) from None
    model.load_state_dict(checkpoint.state_dict)
    restore_random_states(state)
    recorder.best_score, recorder.best_round = state.best_score, state.best_round
    recorder.untrained = dict(state.untrained)
    recorder.round_seconds = list(state.round_seconds)
    recorder.refusals = {int(k): int(v) for k, v in state.refusals.items()}
    _restore_files(folder, state)
    last_release = last_ledger_round(folder)
    continued_after = max(state.round, last_release)
    state.resumes.append({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "from_round": state.round,
        "continued_after": continued_after,
        "rounds_lost": continued_after - state.round,
    })  # fmt: skip
    if continued_after > state.round:
        logger.warning(
            "resuming %s from round %d; rounds up to %d were released (ledger) but not "
            "saved: they count in the privacy account, training continues at round %d",
            folder, state.round, continued_after, continued_after + 1,
        )  # fmt: skip
    else:
        logger.info("resuming %s after round %d", folder, state.round)
    return Resumption(state, continued_after - state.round_offset)


def _check_resumable(config: FederatedConfig, folder: Path) -> None:
    """The run folder is ``resume-from`` and its run did not complete."""
    if Path(config.resume_from) != folder:
        raise ResumeError(
            f"resume-from {config.resume_from} must be the run's own folder (results-dir "
            f"{folder}): a resumed run continues in the folder it left"
        )
    summary = folder / SUMMARY
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        raise ResumeError(f"{summary}: this run completed; there is nothing to resume")


def _check_same_run(
    config: FederatedConfig, state: ServerState, folder: Path, round_offset: int
) -> None:
    """The config must be the saved run's: a changed one would not continue that run."""
    ours, saved = run_config_of(config), dict(state.run_config)
    saved.pop(RESUME_KEY, None)
    differences = [
        f"{key} {saved.get(key)!r} (saved) vs {ours.get(key)!r} (now)"
        for key in sorted(set(ours) | set(saved))
        if ours.get(key) != saved.get(key)
    ]
    if differences:
        raise ResumeError(
            f"{folder / STATE_FOLDER}: the run config differs from the saved run's: "
            f"{'; '.join(differences)}"
        )
    if state.round_offset != round_offset:
        raise ResumeError(
            f"{folder / STATE_FOLDER}: saved with round offset {state.round_offset}, but "
            f"initial-checkpoint gives {round_offset}"
        )


def _restore_files(folder: Path, state: ServerState) -> None:
    """Checkpoints and metrics.csv as they were when the state was saved."""
    state_dir = folder / STATE_FOLDER
    keep_file(state_dir / state.model_file, folder / CHECKPOINT)
    if state.best_file:
        keep_file(state_dir / state.best_file, folder / BEST_CHECKPOINT)
    else:
        (folder / BEST_CHECKPOINT).unlink(missing_ok=True)
    path = folder / METRICS
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if len(lines) < state.metrics_rows + 1:
        raise ResumeError(
            f"{path}: holds {max(len(lines) - 1, 0)} rows, but the saved state was written "
            f"after row {state.metrics_rows}"
        )
    write_text_atomically(path, "".join(lines[: state.metrics_rows + 1]))


def last_ledger_round(folder: Path) -> int:
    """The last round any ledger of this run (``folder``'s name) records; 0 if none."""
    rounds = [
        entry.round
        for path in sorted((folder / LEDGER_FOLDER).glob("*.jsonl"))
        for entry in read_ledger_file(path).entries
        if entry.run_id == folder.name
    ]
    return max(rounds, default=0)


def metrics_rows(path: Path) -> int:
    """Data rows of a metrics.csv (complete lines after the header)."""
    with path.open(newline="") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


class SkipRounds(StrategyWrapper):
    """Flower's rounds 1..``through`` were done before the kill: no messages, no updates."""

    def __init__(self, strategy: Strategy, through: int) -> None:
        super().__init__(strategy)
        self.through = through

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No messages for a round done before; the wrapped strategy's otherwise."""
        if server_round <= self.through:
            return []
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Nothing to aggregate in a skipped round (the model stays the saved one)."""
        if server_round <= self.through:
            return None, None
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation in a skipped round."""
        if server_round <= self.through:
            return []
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate in a skipped round."""
        if server_round <= self.through:
            return None
        return self.strategy.aggregate_evaluate(server_round, replies)


class RoundStateKeeper:
    """Saves the server state after each round's row; skips the rounds of a resumed run.

    Use :attr:`strategy` (the given one, wrapped in :class:`SkipRounds` when resuming)
    and :meth:`evaluate` (the recorder's, then the state) in ``Strategy.start``.
    """

    def __init__(
        self,
        recorder: RunRecorder,
        strategy: Strategy,
        config: FederatedConfig,
        resumption: Resumption | None = None,
        fault_log: FaultLog | None = None,
    ) -> None:
        self.recorder = recorder
        self.fault_log = fault_log
        self.folder = recorder.results_dir
        self.run_config = run_config_of(config)
        self.names = [name for name, _ in recorder.model.named_parameters()]
        self.resumption = resumption
        self.best_file = resumption.state.best_file if resumption else ""
        self.resumes = resumption.state.resumes if resumption else []
        self.strategy = strategy
        if resumption is not None:
            restore_optimizer(strategy, resumption.state.optimizer, self.names)
            if fault_log is not None:  # the totals cover every round, across resumes
                fault_log.restore(resumption.state.faults)
            self.strategy = SkipRounds(strategy, resumption.skip_through)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower ``evaluate_fn``: the recorder's evaluation, then the state is saved."""
        if self.resumption is not None and server_round <= self.resumption.skip_through:
            return None  # done before the kill: its row and state are on disk
        result = self.recorder.evaluate(server_round, arrays)
        self.save(self.recorder.round_offset + server_round, arrays)
        return result

    def initial_arrays(self) -> ArrayRecord:
        """What Flower starts from: the saved global arrays when resuming, else the model's."""
        if self.resumption is None or not self.resumption.state.arrays:
            return model_to_arrays(self.recorder.model)
        saved = self.resumption.state.arrays
        return ArrayRecord({name: Array(saved[name].numpy()) for name in self.names})

    def save(self, numbered_round: int, arrays: ArrayRecord) -> None:
        """Save the state after ``numbered_round`` (its checkpoint and row are written)."""
        state_dir = self.folder / STATE_FOLDER
        state_dir.mkdir(exist_ok=True)
        model_file = f"model-round-{numbered_round}.pt"
        keep_file(self.folder / CHECKPOINT, state_dir / model_file)
        if self.recorder.selects_best and self.recorder.best_round == numbered_round:
            self.best_file = f"best-round-{numbered_round}.pt"
            keep_file(self.folder / BEST_CHECKPOINT, state_dir / self.best_file)
        python_random, torch_random = random_states()
        state = ServerState(
            round=numbered_round, round_offset=self.recorder.round_offset,
            model_file=model_file, best_file=self.best_file,
            best_score=self.recorder.best_score, best_round=self.recorder.best_round,
            untrained=dict(self.recorder.untrained),
            round_seconds=list(self.recorder.round_seconds),
            refusals=dict(self.recorder.refusals),
            metrics_rows=metrics_rows(self.folder / METRICS),
            ledger=ledger_heads(self.folder / LEDGER_FOLDER), run_config=self.run_config,
            resumes=self.resumes, optimizer=optimizer_state(self.strategy, self.names),
            faults=self.fault_log.totals() if self.fault_log else {},
            python_random=python_random, torch_random=torch_random,
            arrays={name: torch.from_numpy(np.array(arrays[name].numpy())) for name in arrays},
        )  # fmt: skip
        save_server_state(self.folder, state)

    def note_resumes(self) -> None:
        """Add the run's resumptions to ``summary.json`` (after the recorder wrote it)."""
        path = self.folder / SUMMARY
        if self.resumes and path.is_file():
            summary = json.loads(path.read_text())
            summary["resumed"] = self.resumes
            write_json(path, summary)
