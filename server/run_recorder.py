"""Server-side bookkeeping of a federated run: per-round metrics, checkpoints, summary.

Flower's strategy calls :meth:`RunRecorder.aggregate_train` with the round's valid
training replies and :meth:`RunRecorder.evaluate` after every round (and once before
round 1), so these two hooks see each round's replies, loss and global model.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from common.data.sequences import LeaveOneOutSplit
from common.evaluation.on_device import OnDeviceScorer
from common.evaluation.ranking import RankingAccumulator
from common.evaluation.scoring import evaluate_model, evaluate_on_device, flatten_metrics
from common.federation.checkpoints import Checkpoint, ItemId, dataset_item_ids, save_checkpoint
from common.federation.compression import UPDATE_BYTES_KEY
from common.federation.config import FederatedConfig
from common.federation.messages import NON_FINITE, load_arrays
from common.federation.metrics import metrics_from_sums, sum_metric_records
from common.models import SequenceRecommender
from common.privacy.ledger import LedgerError
from common.privacy.ledger_heads import LEDGER_FOLDER, ledger_heads, read_started_from
from common.storage.run_folder import MetricsCSV, write_json
from common.training.centralized import SELECTION_METRIC
from server.node_errors import NodeError
from server.side_by_side import side_by_side_of

logger = logging.getLogger("fedseqrec.server")

METRIC_NAMES = list(flatten_metrics(RankingAccumulator(), RankingAccumulator()))
ROUND_COLUMNS = [
    "round", "clients", "examples", "refused", "train_loss", "round_seconds", "eval_seconds",
    "non_finite",  # users whose update was not finite: they contributed zero
    "update_bytes",  # array bytes the clients sent this round (ArrayRecord.count_bytes)
    "update_bytes_per_client",
    "failed",  # clients asked whose reply failed or never came (server/fault_tolerance.py)
    "rejected",  # replies refused by the update checks (reasons in rejections.csv)
]  # fmt: skip
COLUMNS = (
    ROUND_COLUMNS
    + [f"valid_{name}" for name in METRIC_NAMES]
    + [f"fed_{name}" for name in METRIC_NAMES]
)
CHECKPOINT = "checkpoint.pt"
FEDERATED_METRICS = (
    "the valid and test figures (and metrics.csv's fed_ columns) are exact metric sums "
    "that the nodes computed on their users' held-out items (with the on-device scorer "
    "when the run released statistics) and sent to the server: a release of users' data "
    "outside the DP guarantee, which covers the models and statistics only"
)
SIMULATION_ONLY = (
    "metrics.csv (train loss, client and clipped counts, validation metrics), the valid "
    "and test figures here and the choice of a best round without DP are computed by the "
    "simulation's measurement harness from every user's data; they are not privatized and "
    "are not part of what the privacy guarantee covers or a deployment releases"
)
BEST_CHECKPOINT = "best_checkpoint.pt"


def _scalar(value: object) -> float:
    """A metric value as a float; lists are not expected here."""
    if not isinstance(value, int | float):
        raise ValueError(f"expected a scalar metric, got {value!r}")
    return float(value)


class RunRecorder:
    """Evaluates, checkpoints and logs each round into ``results_dir``.

    ``item_ids`` is the catalogue written into every checkpoint (read from the data set
    when not given). A run continued from a checkpoint of round R passes
    ``round_offset=R``: its rows and checkpoints are numbered R, R + 1, ...
    """

    def __init__(
        self,
        results_dir: Path,
        model: SequenceRecommender,
        split: LeaveOneOutSplit | None,
        config: FederatedConfig,
        expected_clients: int,
        item_ids: Sequence[ItemId] | None = None,
        round_offset: int = 0,
    ) -> None:
        if not results_dir.is_absolute():
            raise ValueError(f"results-dir must be an absolute path, got {str(results_dir)!r}")
        results_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir = results_dir
        self.model = model
        self.split = split
        self.config = config
        self.expected_clients = expected_clients
        self.item_ids = (
            list(item_ids)
            if item_ids is not None
            else dataset_item_ids(config.dataset, config.dataset_columns, config.dataset_time_unit)
        )
        if split is not None and len(self.item_ids) != split.n_items:
            raise ValueError(
                f"catalogue of {len(self.item_ids)} item ids for {split.n_items} items"
            )
        self.round_offset = round_offset
        self.last_round = round_offset  # the numbered round of the model last evaluated
        self.csv = MetricsCSV(results_dir / "metrics.csv", COLUMNS)
        self.best_score, self.best_round = -1.0, -1
        # Picking a best round by validation on users' data is a release: DP runs release
        # the last round instead (DESIGN.md, "Every release is accounted or withheld").
        # A deployment's server has no validation data: it releases the last round too.
        # A model trained on the validation items has no validation figures to select by.
        self.validates = split is not None and not config.train_through_validation
        self.selects_best = config.dp == "none" and self.validates
        self.untrained: dict[str, float] = {}
        self.round_seconds: list[float] = []
        self._train: dict[str, float] | None = None
        self._federated: dict[str, float] = {}
        self._refused = 0
        self.refusals: dict[int, int] = {}
        self._faults: dict[str, int] = {}
        self._started = time.perf_counter()
        self._round_started = self._started
        # per stage, set when the run released statistics (server/statistics_release.py)
        self.on_device: dict[str, OnDeviceScorer] = {}
        # per stage, a scorer whose figures do not depend on the model, and its figures
        self._model_free: dict[str, tuple[OnDeviceScorer, dict[str, float]]] = {}
        # user-level DP: each numbered round's noise witness, saved with every checkpoint
        self.noise_witness: dict[int, np.ndarray] = {}

    def metrics(self, split: LeaveOneOutSplit, stage: str) -> dict[str, float]:
        """The figures users get: the on-device scorer's when there is one, else the model's.

        A scorer that gives the model no weight scores the same in every round: its
        figures are computed once per stage (a full-ranking pass over every user, the
        longest part of a run with a million users) and reused.
        """
        if stage in self.on_device:
            scorer = self.on_device[stage]
            cached = self._model_free.get(stage)
            if cached is not None and cached[0] is scorer:  # the same release, no model
                return dict(cached[1])
            figures = evaluate_on_device(
                scorer, self.model, split, stage, self.config.max_len, self.config.n_gap_buckets
            )
            if not scorer.settings.model_weight:
                self._model_free[stage] = (scorer, dict(figures))
            return figures
        return evaluate_model(
            self.model, split, stage, self.config.max_len, self.config.n_gap_buckets
        )

    def aggregate_train(self, records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        """Flower's weighted train-metric average, remembering replies and examples."""
        examples = sum(
            _scalar(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records
        )
        aggregated = aggregate_metricrecords(records, weighted_by_key)
        clients = sum(
            _scalar(next(iter(r.metric_records.values())).get("clients", 1)) for r in records
        )
        non_finite = sum(
            _scalar(next(iter(r.metric_records.values())).get(NON_FINITE, 0)) for r in records
        )
        self._train = {
            "clients": clients,
            "non_finite": non_finite,
            "examples": examples,
            "train_loss": _scalar(aggregated.get("train_loss", float("nan"))),
        }
        sent = [
            _scalar(metrics[UPDATE_BYTES_KEY])
            for r in records
            for metrics in r.metric_records.values()
            if UPDATE_BYTES_KEY in metrics
        ]
        if sent:
            self._train["update_bytes"] = sum(sent)
            self._train["update_bytes_per_client"] = sum(sent) / len(sent)
        return aggregated

    def note_refusals(self, server_round: int, refused: int) -> None:
        """Clients that refused this round because their privacy budget is spent."""
        self._refused = refused
        self.refusals[server_round] = refused

    def note_noise_witness(self, server_round: int, values: np.ndarray) -> None:
        """This round's noise witness (user-level DP), released with its checkpoint."""
        self.noise_witness[self.round_offset + server_round] = values

    def note_faults(self, failed: int, rejected: int) -> None:
        """This round's failed clients and rejected updates, for its metrics.csv row."""
        self._faults = {"failed": failed, "rejected": rejected}

    def aggregate_evaluate(self, records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        """Exact federated metrics from the clients' sums."""
        total = sum_metric_records(records, weighted_by_key)
        self._federated = metrics_from_sums(total)
        return total

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower ``evaluate_fn``: validate every ``eval-every`` rounds, checkpoint, log."""
        round_seconds = time.perf_counter() - self._round_started
        train, self._train = self._train, None
        if server_round > 0 and train is None:
            raise RuntimeError(f"round {server_round}: no client returned a training result")
        load_arrays(self.model, arrays)
        started = time.perf_counter()
        valid: dict[str, float] = {}
        last = server_round == self.config.num_server_rounds
        due = server_round % self.config.eval_every == 0 or last
        if self.split is not None and self.validates and due:
            valid = self.metrics(self.split, "valid")
        numbered = self.last_round = self.round_offset + server_round
        self._save(CHECKPOINT, numbered, valid)
        if self.selects_best and valid and valid[SELECTION_METRIC] > self.best_score:
            self.best_score, self.best_round = valid[SELECTION_METRIC], numbered
            self._save(BEST_CHECKPOINT, numbered, valid)
        if server_round == 0:
            self.untrained = valid
        else:
            self.round_seconds.append(round_seconds)
        eval_seconds = time.perf_counter() - started
        self._write_row(numbered, train or {}, valid, round_seconds, eval_seconds)
        self._round_started = time.perf_counter()
        return MetricRecord(valid) if valid else None  # type: ignore[arg-type]

    def _save(self, name: str, numbered_round: int, valid: dict[str, float]) -> None:
        """A stand-alone checkpoint of the current model (weights, config, catalogue)."""
        checkpoint = Checkpoint(
            round=numbered_round,
            state_dict=self.model.state_dict(),
            model_config=self.config.model_config(),
            item_ids=self.item_ids,
            dataset=self.config.dataset,
            valid=valid,
            ledger=ledger_heads(self.results_dir / LEDGER_FOLDER),
            noise_witness={r: torch.from_numpy(v) for r, v in self.noise_witness.items()},
        )
        save_checkpoint(self.results_dir / name, checkpoint)

    def _write_row(
        self,
        server_round: int,
        train: dict[str, float],
        valid: dict[str, float],
        round_seconds: float,
        eval_seconds: float,
    ) -> None:
        row: dict[str, Any] = {"round": server_round, **train, "refused": self._refused}
        row.update(self._faults)
        self._refused, self._faults = 0, {}
        row.update(
            {"round_seconds": round(round_seconds, 3), "eval_seconds": round(eval_seconds, 3)}
        )
        row.update({f"valid_{key}": value for key, value in valid.items()})
        row.update({f"fed_{key}": value for key, value in self._federated.items()})
        self.csv.append(row)
        self._federated = {}
        clients = f"{int(train['clients'])}/{self.expected_clients}" if train else "-"
        loss = f"{train['train_loss']:.4f}" if train else "-"
        shown = (
            f"valid HR@10 {valid['hr@10']:.4f} NDCG@10 {valid['ndcg@10']:.4f}"
            if valid
            else "valid -"
        )
        logger.info(
            "round %d/%d | clients %s | loss %s | %.2fs (+%.2fs eval) | %s",
            server_round,
            self.round_offset + self.config.num_server_rounds,
            clients,
            loss,
            round_seconds,
            eval_seconds,
            shown,
        )

    def finish(
        self,
        stopped: str = "",
        privacy: dict[str, Any] | None = None,
        node_errors: list[NodeError] | None = None,
        federated: dict[str, dict[str, float]] | None = None,
        faults: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Test the released checkpoint and write ``summary.json`` with status completed.

        The released model is the best validation round without DP, the last round with
        DP (a selection by private validation data would be an unaccounted release).

        ``stopped`` says why the run ended before its last round (e.g. a spent privacy
        budget); ``privacy`` is the run's privacy statement, if it had one;
        ``node_errors`` (error replies of nodes, see :mod:`server.node_errors`) are
        listed in the summary: a run can complete while some node failed. ``federated``
        holds a deployment's valid and test metrics, summed by the nodes; ``faults`` the
        run's degraded rounds, client failures and rejected updates.
        """
        summary: dict[str, Any] = {"status": "completed", **self._release(federated)}
        rounds = self.round_seconds
        summary.update({
            "untrained_valid": self.untrained,
            "rounds": len(rounds),
            "mean_round_seconds": sum(rounds) / len(rounds) if rounds else 0.0,
            "total_seconds": time.perf_counter() - self._started,
            "config": self.config.to_run_config(),
            "stopped_early": stopped or None,
            "budget_refusals": sum(self.refusals.values()),
            "privacy": privacy,
            "node_errors": [error.to_json() for error in node_errors or []],
            "run_id": self.results_dir.name,
            "ledger": ledger_heads(self.results_dir / LEDGER_FOLDER),
            **(faults or {}),
        })  # fmt: skip
        if self.config.initial_checkpoint:
            summary["started_from"] = {
                "checkpoint": self.config.initial_checkpoint,
                "round": self.round_offset,
                "ledger": read_started_from(self.results_dir / LEDGER_FOLDER),
            }
        write_json(self.results_dir / "summary.json", summary)
        logger.info(
            "released round %d (%s): test HR@10 %.4f NDCG@10 %.4f",
            summary["released_round"],
            summary["release_selection"],
            summary["test"]["hr@10"],
            summary["test"]["ndcg@10"],
        )
        return summary

    def _release(self, federated: dict[str, dict[str, float]] | None) -> dict[str, Any]:
        """Which checkpoint is released, why, and its valid and test figures."""
        released = self.results_dir / (BEST_CHECKPOINT if self.selects_best else CHECKPOINT)
        checkpoint = torch.load(released, weights_only=True)
        self.model.load_state_dict(checkpoint["state_dict"])
        figures = federated or {
            stage: self.metrics(self.split, stage) if stage == "test" or self.validates else {}
            for stage in ("valid", "test")
            if self.split is not None
        }
        simulated = self.split is not None
        return {
            **side_by_side_of(self.on_device, self.model, self.split, figures, self.config),
            "released_round": int(checkpoint["round"]),
            "released_checkpoint": released.name,
            "release_selection": "best validation NDCG@10" if self.selects_best else "last round",
            "scoring": "on-device scorer (scorer.json, statistics.npz)"
            if self.on_device
            else "global model",
            "simulation_only_diagnostics": SIMULATION_ONLY if simulated else None,
            "released_metrics": None if simulated else FEDERATED_METRICS,
            "valid": figures["valid"],
            "test": figures["test"],
        }


def record_failure(
    results_dir: Path, error: BaseException, node_errors: list[NodeError] | None = None
) -> None:
    """Write ``summary.json`` with status failed, so that the launcher can say why.

    The reason names the first node that sent an error reply and counts the others (all
    are listed under ``node_errors``), since a node's failure is usually why no round
    could be aggregated.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    node_errors = node_errors or []
    distinct = list({(e.node_id, e.reason): e for e in node_errors}.values())
    shown = [*map(str, distinct[:1])]
    if len(distinct) > 1:  # e.g. a dead worker fails every node sent to it
        shown.append(f"{len(distinct) - 1} more node errors in summary.json")
    reason = "; ".join([f"{type(error).__name__}: {error}", *shown])
    summary: dict[str, Any] = {
        "status": "failed",
        "error": reason,
        "node_errors": [e.to_json() for e in node_errors],
        "run_id": results_dir.name,
        **fault_totals(results_dir / "rejections.csv"),  # every attempt's, this one's too
    }
    try:  # what was released before the failure stays auditable
        summary["ledger"] = ledger_heads(results_dir / LEDGER_FOLDER)
    except LedgerError as unreadable:
        summary["ledger_error"] = str(unreadable)
    write_json(results_dir / "summary.json", summary)


def fault_totals(path: Path) -> dict[str, int]:
    """Client failures and rejected updates in a ``rejections.csv`` (all attempts)."""
    if not path.is_file():
        return {"client_failures": 0, "rejected_updates": 0}
    with path.open(newline="") as handle:
        kinds = [row.get("kind") for row in csv.DictReader(handle)]
    return {"client_failures": kinds.count("failed"), "rejected_updates": kinds.count("rejected")}
