"""Rounds that survive failed clients and hostile updates, and say so.

:class:`ReplyScreening` wraps the strategy that aggregates training replies. Each round
it counts the clients asked, the replies that failed (an error reply, or none before
``round-timeout``) and the replies its checks refuse (:mod:`server.update_validation`),
hands only the valid replies on, and

- stops the run with :class:`WorkerDiedError` when a reply says a simulation worker
  died: Flower 1.41's simulation engine (``flwr.simulation.ray_transport``) puts a dead
  Ray actor back into its pool and never replaces it, so every later client sent to it
  would fail and the run would go on degraded without a word;
- stops the run with :class:`TooFewRepliesError` when fewer than ``min-replies`` valid
  replies arrived.

:class:`FaultLog` keeps the counts: per round for ``metrics.csv`` (``failed``,
``rejected``), every failure and rejection with its node and reason in
``rejections.csv``, and the totals for ``summary.json`` and the launcher's last line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.reliability import required_replies
from common.privacy.budget import BUDGET_EXHAUSTED
from common.storage.run_folder import MetricsCSV
from server.strategy_wrapper import StrategyWrapper
from server.update_validation import reply_problem

logger = logging.getLogger("fedseqrec.server")

REJECTIONS_FILE = "rejections.csv"
DEAD_WORKER_MARKERS = ("ActorDiedError", "RayActorError", "ActorUnavailableError")


class WorkerDiedError(RuntimeError):
    """A simulation worker (Ray actor) died; the engine would fail its clients from now on."""


class TooFewRepliesError(RuntimeError):
    """A round got fewer valid replies than ``min-replies``."""


@dataclass(frozen=True)
class RoundFaults:
    """One round's clients asked, failures and rejections as (node id, reason) pairs."""

    server_round: int
    asked: int
    valid: int
    failures: list[tuple[int, str]] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """Fewer valid replies than clients asked."""
        return self.valid < self.asked


class FaultLog:
    """Totals over the run and ``rejections.csv`` (round, node, kind, reason)."""

    def __init__(self, results_dir: Path) -> None:
        self.csv = MetricsCSV(results_dir / REJECTIONS_FILE, ["round", "node_id", "kind", "reason"])
        self.rounds = 0
        self.degraded_rounds = 0
        self.client_failures = 0
        self.rejected_updates = 0

    def record(self, faults: RoundFaults) -> None:
        """Add one round's counts and write its failures and rejections."""
        self.rounds += 1
        self.degraded_rounds += int(faults.degraded)
        self.client_failures += len(faults.failures)
        self.rejected_updates += len(faults.rejections)
        for kind, entries in (("failed", faults.failures), ("rejected", faults.rejections)):
            for node_id, reason in entries:
                self.csv.append({"round": faults.server_round, "node_id": node_id,
                                 "kind": kind, "reason": reason})  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The totals ``summary.json`` carries (the launcher reads them)."""
        return {
            "degraded_rounds": self.degraded_rounds,
            "client_failures": self.client_failures,
            "rejected_updates": self.rejected_updates,
        }


class ReplyScreening(StrategyWrapper):
    """Count failures, refuse invalid updates, enforce ``min-replies``, stop on dead workers.

    ``deltas``: replies carry update sums (cohorts) rather than new weights.
    ``on_round`` receives each round's :class:`RoundFaults` before aggregation.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        min_replies: float,
        on_round: Callable[[RoundFaults], None],
        validate: bool = True,
        deltas: bool = False,
        max_update_norm: float = 0.0,
    ) -> None:
        super().__init__(strategy)
        self.min_replies = min_replies
        self.on_round = on_round
        self.validate = validate
        self.deltas = deltas
        self.max_update_norm = max_update_norm
        self._reference = ArrayRecord()
        self._asked: list[int] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays and which nodes were asked."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._reference = arrays
        self._asked = [message.metadata.dst_node_id for message in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies (class docstring), then aggregate the valid ones."""
        replies = list(replies)
        _stop_on_dead_worker(server_round, replies)
        refused = [r for r in replies if r.has_error() and r.error.code == BUDGET_EXHAUSTED]
        valid, faults = self._screen(server_round, replies, refused)
        self.on_round(faults)
        needed = required_replies(self.min_replies, faults.asked)
        if faults.valid < needed:
            reasons = "; ".join(
                f"node {n}: {why}" for n, why in (faults.failures + faults.rejections)[:3]
            )
            raise TooFewRepliesError(
                f"round {server_round}: {faults.valid} valid replies of {faults.asked} clients "
                f"asked, min-replies {self.min_replies:g} needs {needed} "
                f"({len(faults.failures)} failed, {len(faults.rejections)} rejected: {reasons})"
            )
        if faults.degraded:
            logger.warning("round %d degraded: %d valid replies of %d (%d failed, %d rejected)",
                           server_round, faults.valid, faults.asked, len(faults.failures),
                           len(faults.rejections))  # fmt: skip
        return self.strategy.aggregate_train(server_round, [*valid, *refused])

    def _screen(
        self, server_round: int, replies: list[Message], refused: list[Message]
    ) -> tuple[list[Message], RoundFaults]:
        """The valid replies and the round's failures and rejections."""
        answered = {reply.metadata.src_node_id for reply in replies}
        failures = [(node, "no reply within the round timeout") for node in self._asked
                    if node not in answered]  # fmt: skip
        rejections, valid = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                if reply.error.code != BUDGET_EXHAUSTED:
                    reason = short_reason(reply.error.reason or f"error {reply.error.code}")
                    failures.append((node, reason))
                continue
            problem = (
                reply_problem(reply, self._reference, deltas=self.deltas,
                              max_update_norm=self.max_update_norm)
                if self.validate else ""
            )  # fmt: skip
            if problem:
                rejections.append((node, problem))
                logger.warning(
                    "round %d: update of node %d rejected: %s", server_round, node, problem
                )
            else:
                valid.append(reply)
        asked = len(self._asked) - len(refused)
        return valid, RoundFaults(server_round, asked, len(valid), failures, rejections)


def short_reason(reason: str, limit: int = 300) -> str:
    """One line of an error reply's reason: the exception message Flower wraps, if any."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].removesuffix("'>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stop_on_dead_worker(server_round: int, replies: list[Message]) -> None:
    """Raise :class:`WorkerDiedError` if an error reply says its worker process died."""
    for reply in replies:
        reason = (reply.error.reason or "") if reply.has_error() else ""
        if any(marker in reason for marker in DEAD_WORKER_MARKERS):
            raise WorkerDiedError(
                f"round {server_round}: the simulation worker running node "
                f"{reply.metadata.src_node_id}'s ClientApp died ({_first_line(reason)}). Flower's "
                "simulation engine keeps a dead Ray worker in its pool and fails every client "
                "later sent to it, so the run stops here rather than go on degraded; rerun it "
                "(if the worker ran out of memory, give the clients fewer users or threads)"
            )


def _first_line(reason: str) -> str:
    """``ActorDiedError: <first line>`` of a Ray error reply's reason."""
    kind = re.search(r"ray\.exceptions\.(\w+)", reason)
    message = reason.split(":<'", 1)[-1].splitlines()[0] if reason else ""
    return f"{kind.group(1)}: {message}" if kind else message[:200]
