"""One order for a round's replies, whatever order they arrived in.

Flower's strategies add the replies' float32 arrays one after the other in the order
they are given, and float addition is not associative: the same replies summed in
another order give a model that differs in the last bits, and the difference grows over
the rounds. Replies arrive in the order the simulation's workers (or the network)
finish them, and node ids are random for every run, so neither is an order to rely on.
:func:`canonical_order` sorts the replies by their content instead, so that the
aggregate is a function of the set of replies alone.
"""

from __future__ import annotations

import hashlib

from flwr.app import Message


def canonical_order(replies: list[Message]) -> list[Message]:
    """``replies`` sorted by :func:`content_digest`; error replies last, as they came."""
    answered = [reply for reply in replies if not reply.has_error()]
    errors = [reply for reply in replies if reply.has_error()]
    return sorted(answered, key=content_digest) + errors


def content_digest(reply: Message) -> bytes:
    """SHA-256 over a reply's arrays (names, dtypes, shapes, bytes) and metrics, by name."""
    digest = hashlib.sha256()
    content = reply.content
    for record_name, record in sorted(content.array_records.items()):
        for name, array in sorted(record.items()):
            digest.update(f"{record_name}/{name}:{array.dtype}{array.shape}".encode())
            digest.update(array.data)
    for record_name, metrics in sorted(content.metric_records.items()):
        digest.update(f"{record_name}:{sorted(metrics.items())!r}".encode())
    return digest.digest()
