"""A strategy wrapper that decodes compressed client updates before aggregation.

Clients with ``update-compression`` float16 or int8 reply with an encoded update to the
round's global model (:mod:`common.federation.compression`). :class:`UpdateDecoding` remembers the
global arrays each round sends out and turns every reply back into float32 weights
before the wrapped Flower strategy aggregates, the way Flower's own DP wrappers hold a
strategy. Everything else is delegated unchanged. Put it outermost: a wrapper that
clips updates (server-side DP) must see decoded weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.federation.compression import COMPRESSIONS, decode_update
from server.strategy_wrapper import StrategyWrapper


class UpdateDecoding(StrategyWrapper):
    """Decode ``method``-compressed train replies, then let ``strategy`` aggregate them."""

    def __init__(self, strategy: Strategy, method: str) -> None:
        super().__init__(strategy)
        if method not in COMPRESSIONS or method == "none":
            raise ValueError(f"method must be one of float16, int8, got {method!r}")
        self.method = method
        self._sent: dict[int, ArrayRecord] = {}

    def summary(self) -> None:
        """Log the compression, then the wrapped strategy's settings."""
        log(INFO, "\t├──> Update compression: %s (decoded before aggregation)", self.method)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays the updates of this round are relative to."""
        self._sent = {server_round: arrays}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Replace each reply's encoded ArrayRecord by the weights it stands for."""
        reference = self._sent.pop(server_round, None)
        if reference is None:
            raise RuntimeError(f"round {server_round}: no global arrays to decode against")
        decoded = decode_replies(replies, reference, self.method)
        return self.strategy.aggregate_train(server_round, decoded)


def decode_replies(
    replies: Iterable[Message], reference: ArrayRecord, method: str
) -> list[Message]:
    """The replies with every ArrayRecord decoded against ``reference`` (in place).

    Replies carrying an error are left alone: the wrapped strategy logs and drops them.
    """
    replies = list(replies)
    for reply in replies:
        if reply.has_error():
            continue
        for key, record in list(reply.content.array_records.items()):
            reply.content[key] = decode_update(record, reference, method)
    return replies


def with_update_decoding(strategy: Strategy, method: str) -> Strategy:
    """``strategy`` itself for ``none``, else wrapped in :class:`UpdateDecoding`."""
    return strategy if method == "none" else UpdateDecoding(strategy, method)
