"""Clients that fail on purpose, reproducibly: the fault-injection option of simulations.

With ``fault-rate`` r > 0, each round round(r x N) of the N simulated clients, chosen by
a permutation seeded with (``fault-seed``, round), fail in the way ``fault-kind`` names
(on the round's first attempt only: when the server asks a failed client again,
``round-retries``, the fault has passed):

- ``crash``: the client's worker process exits (``os._exit``), as a killed worker would;
- ``hang``: it sleeps past ``round-timeout``, then raises;
- ``error``: it raises, and Flower sends the server an error reply;
- ``nan``: it trains, then sends an update full of NaN;
- ``scale``: it trains, then sends its update multiplied by :data:`SCALE`.

The same seed, round and partition id always give the same choice, in every process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from common.federation.config import FederatedConfig
from common.federation.messages import ARRAYS

logger = logging.getLogger("fedseqrec.client")

SCALE = 100.0  # what a ``scale`` fault multiplies the update by
HANG_MARGIN = 10.0  # seconds a ``hang`` sleeps beyond the round timeout


class InjectedFault(RuntimeError):
    """The failure a fault-injected client raises (``error``, and ``hang`` once it wakes)."""


def faulty_partitions(
    fault_seed: int, server_round: int, num_partitions: int, rate: float
) -> set[int]:
    """The partition ids that fail in ``server_round``: round(rate x N), seeded."""
    count = int(np.floor(rate * num_partitions + 0.5))
    if count <= 0:
        return set()
    rng = np.random.default_rng([fault_seed, server_round, 0xFA17])
    return {int(p) for p in rng.permutation(num_partitions)[:count]}


def fault_of(
    config: FederatedConfig, server_round: int, node_config: Mapping[str, Any], attempt: int = 1
) -> str:
    """This simulated client's fault kind in ``server_round``, or '' (none, not simulated,
    or a retry: injected faults are transient, ``attempt`` 2, 3, ... is answered)."""
    if config.fault_rate <= 0 or "partition-id" not in node_config or attempt > 1:
        return ""
    partition_id, num_partitions = (
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
    )
    chosen = faulty_partitions(config.fault_seed, server_round, num_partitions, config.fault_rate)
    return config.fault_kind if partition_id in chosen else ""


def fail_before_training(kind: str, config: FederatedConfig, server_round: int) -> None:
    """Crash, hang or raise for those kinds; the update-corrupting kinds do nothing here."""
    if kind == "crash":
        logger.warning("injected fault: crashing this worker in round %d", server_round)
        os._exit(17)
    if kind == "hang":
        time.sleep(config.round_timeout + HANG_MARGIN)
        raise InjectedFault(f"injected fault: hung past the round timeout in round {server_round}")
    if kind == "error":
        raise InjectedFault(f"injected fault: client error in round {server_round}")


def corrupt_reply(kind: str, reply: Message, sent: ArrayRecord, deltas: bool) -> Message:
    """The reply with its update replaced by NaN (``nan``) or scaled (``scale``), in place.

    ``sent`` is the round's global model; ``deltas``: the reply carries an update sum
    (cohorts) rather than new weights.
    """
    if kind not in ("nan", "scale") or reply.has_error():  # e.g. a budget refusal
        return reply
    arrays = reply.content.array_records[ARRAYS]
    corrupted = {}
    for name in arrays:
        value = arrays[name].numpy()
        if kind == "nan":
            new = np.full_like(value, np.nan)
        elif deltas:
            new = (value * SCALE).astype(value.dtype)
        else:
            base = sent[name].numpy()
            new = (base + SCALE * (value - base)).astype(value.dtype)
        corrupted[name] = Array(new)
    reply.content[ARRAYS] = ArrayRecord(corrupted)
    return reply
