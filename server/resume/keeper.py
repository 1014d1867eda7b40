"""Keep a run resumable: save the server state after every round, skip done rounds on resume.

:class:`RoundStateKeeper` wraps the recorder's ``evaluate_fn``: after each round's
checkpoint and metrics row it saves the server's state (:mod:`server.resume.state`);
:class:`SkipRounds` makes Flower's strategy skip the rounds a resumed run already did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.privacy.ledger_heads import LEDGER_FOLDER, ledger_heads
from common.storage.run_folder import write_json
from server.fault_tolerance import FaultLog
from server.resume.flower_optimizer import optimizer_state, restore_optimizer
from server.resume.restore import METRICS, SUMMARY, Resumption, metrics_rows, run_config_of
from server.resume.state import (
    STATE_FOLDER,
    ServerState,
    keep_file,
    random_states,
    save_server_state,
)
from server.run_recorder import BEST_CHECKPOINT, CHECKPOINT, RunRecorder
from server.strategy_wrapper import StrategyWrapper


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
