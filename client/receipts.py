"""An edge node's receipts: what the server announced and sent, signed by the node.

Kept only on an edge node whose node config names a ``receipt-key`` (its node-authentication
private key); simulations keep none, since their server is the measurement harness. The
record, its signature and what it binds are in :mod:`common.privacy.node_receipts`.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType

from common.data.node_data import NodeDataConfig
from common.federation.messages import (
    ARRAYS,
    CONFIG,
    DP_CLIP_NORM,
    DP_MECHANISM,
    DP_NOISE_MULTIPLIER,
    DP_SAMPLING_RATE,
    LEDGER_PUBLIC_KEY,
    LEDGER_RUN_ID,
    POPULATION_KEY,
    ROUND_OFFSET,
    SERVER_ROUND,
)
from common.privacy.node_receipts import NO_MECHANISM, Receipt, append_receipt, arrays_sha256
from common.privacy.signing import Signer


def _number(settings: ConfigRecord, key: str) -> float | None:
    value = settings.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def receipt_of(msg: Message, node_id: int) -> Receipt:
    """What ``msg`` announced and the hash of the model it carried (unsigned, unchained)."""
    settings = msg.content.config_records.get(CONFIG) or ConfigRecord()
    arrays = msg.content.array_records.get(ARRAYS) or ArrayRecord()
    server_round = int(settings.get(SERVER_ROUND, 0)) + int(settings.get(ROUND_OFFSET, 0))  # type: ignore[arg-type]
    kind = msg.metadata.message_type.split(".")[0]  # "train" or "evaluate"
    population = settings.get(POPULATION_KEY)
    server_key = settings.get(LEDGER_PUBLIC_KEY)
    return Receipt(
        run_id=str(settings.get(LEDGER_RUN_ID, "")),
        node_id=int(node_id),
        message=kind,
        round=server_round,
        model_round=server_round - 1 if kind == MessageType.TRAIN else server_round,
        model_sha256=arrays_sha256({name: arrays[name].numpy() for name in arrays}),
        mechanism=str(settings.get(DP_MECHANISM, NO_MECHANISM)),
        noise_multiplier=_number(settings, DP_NOISE_MULTIPLIER),
        clip_norm=_number(settings, DP_CLIP_NORM),
        sampling_rate=_number(settings, DP_SAMPLING_RATE),
        population=population if isinstance(population, int) else None,
        server_key=server_key if isinstance(server_key, str) else None,
        time=time.time(),
    )


def keep_receipt(msg: Message, context: Context) -> None:
    """On an edge node with a ``receipt-key``: append a signed receipt of ``msg``."""
    if not NodeDataConfig.applies_to(context.node_config):
        return
    node = NodeDataConfig.from_node_config(context.node_config)
    if node.receipt_key is None:
        return
    append_receipt(
        node.node_folder, receipt_of(msg, context.node_id), Signer.from_file(node.receipt_key)
    )
