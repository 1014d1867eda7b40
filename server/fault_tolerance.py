"""Rounds that survive failed clients and hostile updates, and say so.

:class:`ReplyScreening` wraps the strategy that aggregates training replies. Each round
it counts the clients asked, the replies that failed (an error reply, or none before
``round-timeout``) and the replies its checks refuse (:mod:`server.update_validation`,
after compressed updates are decoded: :mod:`server.update_decoding`), hands only the
valid replies on, and

- stops the run with :class:`WorkerDiedError` when a reply says a simulation worker
  died: Flower 1.41's simulation engine (``flwr.simulation.ray_transport``) puts a dead
  Ray actor back into its pool and never replaces it, so every later client sent to it
  would fail and the run would go on degraded without a word;
- when fewer than ``min-replies`` valid replies arrived, asks the clients that failed
  again, up to ``round-retries`` times within the round, then stops the run with
  :class:`TooFewRepliesError`. Retries come before anything is aggregated, so a retried
  round has released nothing (no ledger entry under ``dp = "user"``); a round whose
  aggregate was formed is never asked again.

:class:`FaultLog` keeps the counts: per round for ``metrics.csv`` (``failed``,
``rejected``), every failure and rejection with its node and reason in
``rejections.csv``, and the totals for ``summary.json`` and the launcher's last line
(saved with the server state after each round, so a resumed run's totals cover the
whole run: :meth:`FaultLog.restore`).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.messages import ROUND_ATTEMPT
from common.federation.reliability import required_replies
from common.privacy.budget import BUDGET_EXHAUSTED
from common.storage.run_folder import MetricsCSV
from server.reply_order import canonical_order
from server.strategy_wrapper import StrategyWrapper
from server.update_decoding import decode_reply
from server.update_validation import reply_problem

logger = logging.getLogger("fedseqrec.server")
detail = logging.getLogger("fedseqrec.server.detail")  # per node: the run log only

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
    attempts: int = 1  # 1 + the retries the round used

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

    def totals(self) -> dict[str, int]:
        """What the server state saves after each round (:meth:`restore` reads it)."""
        return {"rounds": self.rounds, **self.summary()}

    def restore(self, totals: dict[str, int]) -> None:
        """Carry on from a saved state's totals, keeping every attempt on the record.

        Rows of ``rejections.csv`` written after the state (in a round that was lost to
        the stop, e.g. the failures of a dead worker) stay, and count in the totals: the
        totals cover every attempt of the run, across resumes.
        """
        self.rounds = int(totals.get("rounds", 0))
        self.degraded_rounds = int(totals.get("degraded_rounds", 0))
        self.client_failures = int(totals.get("client_failures", 0))
        self.rejected_updates = int(totals.get("rejected_updates", 0))
        with self.csv.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows[self.client_failures + self.rejected_updates :]:
            self.client_failures += row.get("kind") == "failed"
            self.rejected_updates += row.get("kind") == "rejected"


class ReplyScreening(StrategyWrapper):
    """Decode, count failures, refuse invalid updates, retry, enforce ``min-replies``.

    ``deltas``: replies carry update sums (cohorts) rather than new weights.
    ``compression``: replies carry encoded updates, decoded before the checks.
    ``retries``: how many times a round short of ``min-replies`` asks the clients that
    failed again (within the round, before anything is aggregated), ``timeout`` seconds
    each time. ``on_round`` receives each round's :class:`RoundFaults` before aggregation.
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
        compression: str = "none",
        retries: int = 0,
        timeout: float = 3600.0,
    ) -> None:
        super().__init__(strategy)
        self.min_replies = min_replies
        self.on_round = on_round
        self.validate = validate
        self.deltas = deltas
        self.max_update_norm = max_update_norm
        self.compression = compression
        self.retries = retries
        self.timeout = timeout
        self._reference = ArrayRecord()
        self._asked: list[int] = []
        self._sent: dict[int, Message] = {}
        self._grid: Grid | None = None

    def summary(self) -> None:
        """Log the screening settings, then the wrapped strategy's."""
        checks = "validated" if self.validate else "not validated"
        if self.compression != "none":
            checks = f"{self.compression}-decoded, then {checks}"
        log(INFO, "\t├──> Reply screening: min-replies %g, %d round-retries, updates %s",
            self.min_replies, self.retries, checks)  # fmt: skip
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays, the grid and the message each node was sent."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._reference, self._grid = arrays, grid
        self._sent = {message.metadata.dst_node_id: message for message in messages}
        self._asked = list(self._sent)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies (class docstring), retry if short, then aggregate the valid.

        The wrapped strategy gets them sorted by content (:mod:`server.reply_order`), not
        in arrival order, so that a seed repeats the same aggregate. Nothing reaches the
        wrapped strategy before the last attempt: a retried round has formed no
        aggregate, so (``dp = "user"``) it has released nothing yet.
        """
        screened = self._screen(server_round, list(replies), self._asked, attempt=1)
        self._stop_on_dead_worker(screened, server_round)
        for attempt in range(2, self.retries + 2):
            faults = screened.faults(server_round)
            needed = required_replies(self.min_replies, faults.asked)
            if faults.valid >= needed or not screened.retry_nodes:
                break
            logger.warning("round %d: %d valid replies of %d, min-replies needs %d: asking the "
                           "%d failed clients again (retry %d of %d)", server_round, faults.valid,
                           faults.asked, needed, len(screened.retry_nodes), attempt - 1,
                           self.retries)  # fmt: skip
            nodes = screened.retry_nodes
            again = self._ask_again(nodes, attempt)
            screened = screened.then(self._screen(server_round, again, nodes, attempt))
            self._stop_on_dead_worker(screened, server_round)
        faults = screened.faults(server_round)
        self.on_round(faults)
        needed = required_replies(self.min_replies, faults.asked)  # a budget refusal asks less
        if faults.valid < needed:
            reasons = "; ".join(
                f"node {n}: {why}" for n, why in (faults.failures + faults.rejections)[:3]
            )
            raise TooFewRepliesError(
                f"round {server_round}: {faults.valid} valid replies of {faults.asked} clients "
                f"asked, min-replies {self.min_replies:g} needs {needed} "
                f"({len(faults.failures)} failed, {len(faults.rejections)} rejected, "
                f"{faults.attempts - 1} of {self.retries} round-retries used: {reasons})"
            )
        if faults.degraded:
            logger.warning("round %d degraded: %d valid replies of %d (%d failed, %d rejected)",
                           server_round, faults.valid, faults.asked, len(faults.failures),
                           len(faults.rejections))  # fmt: skip
        ordered = canonical_order([*screened.valid, *screened.refused])
        return self.strategy.aggregate_train(server_round, ordered)

    def _stop_on_dead_worker(self, screened: ScreenedReplies, server_round: int) -> None:
        """Record the round's failures, then raise :class:`WorkerDiedError`, if a worker died."""
        if screened.dead_worker:
            self.on_round(screened.faults(server_round))  # the failures stay on the record
            raise WorkerDiedError(screened.dead_worker)

    def _ask_again(self, nodes: list[int], attempt: int) -> list[Message]:
        """Send ``nodes`` their round's message again, marked with ``attempt``."""
        if self._grid is None:
            raise RuntimeError("a round can only be retried after it was configured")
        messages = [retry_message(self._sent[node], attempt) for node in nodes]
        return list(self._grid.send_and_receive(messages, timeout=self.timeout))

    def _screen(
        self, server_round: int, replies: list[Message], asked: list[int], attempt: int
    ) -> ScreenedReplies:
        """One attempt's replies sorted into valid, refused, failures and rejections."""
        prefix = "" if attempt == 1 else f"retry {attempt - 1}: "
        answered = {reply.metadata.src_node_id for reply in replies}
        screened = ScreenedReplies(
            asked=len(asked), attempts=attempt, dead_worker=dead_worker(server_round, replies)
        )
        for node in asked:
            if node not in answered:
                screened.fail(node, f"{prefix}no reply within the round timeout")
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                if reply.error.code == BUDGET_EXHAUSTED:
                    screened.refused.append(reply)
                else:
                    reason = short_reason(reply.error.reason or f"error {reply.error.code}")
                    screened.fail(node, prefix + reason)
                continue
            problem = decode_reply(reply, self._reference, self.compression) or (
                reply_problem(reply, self._reference, deltas=self.deltas,
                              max_update_norm=self.max_update_norm)
                if self.validate else ""
            )  # fmt: skip
            if problem:
                screened.rejections.append((node, prefix + problem))
                detail.warning(
                    "round %d: update of node %d rejected: %s", server_round, node, problem
                )
            else:
                screened.valid.append(reply)
        return screened


@dataclass
class ScreenedReplies:
    """A round's replies so far, sorted; ``retry_nodes`` failed in the last attempt."""

    asked: int
    attempts: int
    valid: list[Message] = field(default_factory=list)
    refused: list[Message] = field(default_factory=list)  # budget refusals: not failures
    failures: list[tuple[int, str]] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)
    retry_nodes: list[int] = field(default_factory=list)
    dead_worker: str = ""  # why a simulation worker died (:func:`dead_worker`), if one did

    def fail(self, node: int, reason: str) -> None:
        """Count a failure of ``node``; it may be asked again."""
        self.failures.append((node, reason))
        self.retry_nodes.append(node)

    def then(self, retry: ScreenedReplies) -> ScreenedReplies:
        """These replies and a retry's (which asked only nodes that failed here)."""
        return ScreenedReplies(
            asked=self.asked, attempts=retry.attempts, valid=self.valid + retry.valid,
            refused=self.refused + retry.refused, failures=self.failures + retry.failures,
            rejections=self.rejections + retry.rejections, retry_nodes=retry.retry_nodes,
            dead_worker=retry.dead_worker or self.dead_worker,
        )  # fmt: skip

    def faults(self, server_round: int) -> RoundFaults:
        """The round's counts: a budget refusal is neither asked nor failed."""
        asked = self.asked - len(self.refused)
        return RoundFaults(server_round, asked, len(self.valid), list(self.failures),
                           list(self.rejections), self.attempts)  # fmt: skip


def retry_message(sent: Message, attempt: int) -> Message:
    """A new message with ``sent``'s content and :data:`ROUND_ATTEMPT` = ``attempt``."""
    content = RecordDict(dict(sent.content.items()))
    for key, record in sent.content.config_records.items():
        content[key] = ConfigRecord({**record, ROUND_ATTEMPT: attempt})
    return Message(
        content=content,
        dst_node_id=sent.metadata.dst_node_id,
        message_type=sent.metadata.message_type,
        group_id=sent.metadata.group_id,
    )


def short_reason(reason: str, limit: int = 300) -> str:
    """One line of an error reply's reason: the exception message Flower wraps, if any."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].removesuffix("'>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dead_worker(server_round: int, replies: list[Message]) -> str:
    """Why the run must stop if an error reply says its worker process died, else "".

    Flower's simulation engine keeps a dead Ray worker in its pool and fails every client
    later sent to it, so the run stops rather than go on degraded.
    """
    for reply in replies:
        reason = (reply.error.reason or "") if reply.has_error() else ""
        if any(marker in reason for marker in DEAD_WORKER_MARKERS):
            return (
                f"round {server_round}: the simulation worker running node "
                f"{reply.metadata.src_node_id}'s ClientApp died ({_first_line(reason)}); "
                "the run stopped (a dead worker fails every client later sent to it). Resume "
                "it; if the worker ran out of memory, give the clients fewer users or threads "
                "or the machine more memory"
            )
    return ""


def _first_line(reason: str) -> str:
    """``ActorDiedError: <first line>`` of a Ray error reply's reason."""
    kind = re.search(r"ray\.exceptions\.(\w+)", reason)
    message = reason.split(":<'", 1)[-1].splitlines()[0] if reason else ""
    return f"{kind.group(1)}: {message}" if kind else message[:200]
