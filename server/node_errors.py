"""Remember which node failed in which round, and why, for the run's summary.

A ClientApp that raises (for example on a malformed local click log) sends Flower an
error reply; the strategy then only logs ``Received error in reply from node N`` and
aggregates the other replies. :class:`ErrorRecordingGrid` sits between the strategy
and Flower's grid, so that every error reply also lands in ``summary.json`` with the
node id, the round, the message type and the reason, whatever the strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

logger = logging.getLogger("fedseqrec.server.detail")  # per node: the run log only


@dataclass(frozen=True)
class NodeError:
    """One error reply: which node, which round and message type, and the reason."""

    node_id: int
    server_round: int
    message_type: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``summary.json``."""
        return asdict(self)

    def __str__(self) -> str:
        """One line: the reason's first line, at most 200 characters (all of it in JSON)."""
        first = " ".join(self.reason.strip().splitlines()[0].split()) if self.reason.strip() else ""
        short = first if len(first) <= 200 else first[:197] + "..."
        where = f"node {self.node_id} failed in round {self.server_round}"
        return f"{where} ({self.message_type}): {short}"


def _server_round(message: Message) -> int:
    """The round a strategy wrote into the message's ConfigRecord (0 if absent)."""
    if message.has_error():
        return 0
    for config in message.content.config_records.values():
        value = config.get("server-round")
        if isinstance(value, int):
            return value
    return 0


class ErrorRecordingGrid(Grid):
    """Flower's grid, delegating every call, that records the error replies it returns."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.errors: list[NodeError] = []

    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """Run information of the wrapped grid."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate to the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegate to the wrapped grid."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped grid, recording error replies (round unknown here)."""
        replies = list(self.grid.pull_messages(message_ids))
        self._record(replies, rounds={})
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate to the wrapped grid, recording error replies with their round."""
        sent = list(messages)
        rounds = {message.metadata.dst_node_id: _server_round(message) for message in sent}
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        self._record(replies, rounds)
        return replies

    def _record(self, replies: list[Message], rounds: dict[int, int]) -> None:
        for reply in replies:
            if not reply.has_error():
                continue
            node_id = reply.metadata.src_node_id
            error = NodeError(
                node_id=node_id,
                server_round=rounds.get(node_id, 0),
                message_type=reply.metadata.message_type,
                reason=reply.error.reason or f"error code {reply.error.code}",
            )
            self.errors.append(error)
            logger.error("%s", error)
