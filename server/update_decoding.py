"""Decode compressed client updates before they are screened and aggregated.

Clients with ``update-compression`` float16 or int8 reply with an encoded update to the
round's global model (:mod:`common.federation.compression`). :class:`server.fault_tolerance.
ReplyScreening` remembers the global arrays each round sends out and turns every reply
back into float32 weights with :func:`decode_reply` before its checks, so that a NaN or a
100x update sent compressed is refused like one sent plain, and a reply that cannot be
decoded is refused with the reason instead of stopping the run.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message

from common.federation.compression import decode_update


def decode_reply(reply: Message, reference: ArrayRecord, method: str) -> str:
    """Decode ``reply``'s ArrayRecords against ``reference`` in place; '' or why not.

    ``none`` leaves the reply alone; so does an error reply (the screening counts it).
    """
    if method == "none" or reply.has_error():
        return ""
    for key, record in list(reply.content.array_records.items()):
        try:
            reply.content[key] = decode_update(record, reference, method)
        except ValueError as error:
            return f"its {method} update cannot be decoded: {error}"
    return ""


def decode_replies(
    replies: Iterable[Message], reference: ArrayRecord, method: str
) -> list[Message]:
    """The replies with every ArrayRecord decoded against ``reference`` (in place).

    A reply that cannot be decoded raises the :class:`ValueError` that says why.
    """
    replies = list(replies)
    for reply in replies:
        problem = decode_reply(reply, reference, method)
        if problem:
            raise ValueError(problem)
    return replies
