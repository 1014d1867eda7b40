"""Secure aggregation (Flower SecAgg+) settings that client and server share.

Under SecAgg+ each sampled client uploads a masked integer vector; the masks cancel only
in the sum, so the server learns the sum and nothing about any single update. Flower's
protocol (legacy workflow API) quantizes before masking: a client with ``n`` examples
sends ``w * params`` with ``w = round(n / max_weight * quantization_range) /
quantization_range``, each value clipped to ``[-clipping_range, clipping_range]`` and
stochastically rounded onto ``quantization_range`` integer levels; the server divides
the sum by the sum of the ``w``. That is FedAvg's example-weighted mean up to
quantization, as long as no value is clipped and ``n <= max_weight`` (checked here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

if TYPE_CHECKING:
    from common.federation.config import FederatedConfig

SECURE_STRATEGIES = ("fedavg", "fedprox")
MODULUS_RANGE = 2**32  # Flower's default and largest mask range (32-bit sums)


def share_setting(value: float, key: str) -> int | float:
    """A share setting as SecAgg+ takes it: above 1 a count, else a fraction of clients."""
    if value <= 0:
        raise ValueError(f"{key} must be > 0, got {value}")
    if value <= 1:
        return float(value)
    if not float(value).is_integer():
        raise ValueError(f"{key} above 1 is a number of clients and must be whole, got {value}")
    return int(value)


def check_secure_aggregation(config: FederatedConfig) -> None:
    """Refuse SecAgg+ settings Flower would reject, and combinations it cannot serve."""
    shares = share_setting(config.secagg_num_shares, "secagg-num-shares")
    threshold = share_setting(
        config.secagg_reconstruction_threshold, "secagg-reconstruction-threshold"
    )
    if isinstance(shares, int) and shares < 3:
        raise ValueError(f"secagg-num-shares as a count must be at least 3, got {shares}")
    if isinstance(shares, int) and isinstance(threshold, int) and threshold >= shares:
        raise ValueError(
            f"secagg-reconstruction-threshold ({threshold}) must be below "
            f"secagg-num-shares ({shares})"
        )
    if config.secagg_clipping_range <= 0 or config.secagg_max_weight <= 0:
        raise ValueError("secagg-clipping-range and secagg-max-weight must be > 0")
    if not 0 < config.secagg_quantization_range < MODULUS_RANGE:
        raise ValueError(
            f"secagg-quantization-range must be in 1..{MODULUS_RANGE - 1}, "
            f"got {config.secagg_quantization_range}"
        )
    if not config.secure_aggregation:
        return
    if config.strategy not in SECURE_STRATEGIES:
        raise ValueError(
            f"secure-aggregation works with strategy {' or '.join(SECURE_STRATEGIES)} "
            f"(the server only gets the weighted mean), got {config.strategy!r}"
        )
    if config.fraction_evaluate > 0:
        raise ValueError(
            "secure-aggregation needs fraction-evaluate = 0: client evaluation sums would "
            "reach the server unmasked (the server evaluates every user itself)"
        )


def check_round_size(clients: int, config: FederatedConfig) -> None:
    """SecAgg+ needs two clients a round, and the integer sum must fit the 2**32 masks."""
    if clients < 2:
        raise ValueError(
            f"secure-aggregation needs at least 2 clients per round, fraction-train "
            f"{config.fraction_train} gives {clients}"
        )
    if clients * config.secagg_quantization_range >= MODULUS_RANGE:
        raise ValueError(
            f"secure-aggregation of {clients} clients per round overflows: clients x "
            f"secagg-quantization-range ({config.secagg_quantization_range}) must stay "
            f"below 2**32; lower one of them"
        )


def check_weighted_range(
    examples: int, ndarrays: Sequence[np.ndarray], config: FederatedConfig
) -> None:
    """Refuse an update that SecAgg+ would clip or overflow instead of averaging it."""
    if examples > config.secagg_max_weight:
        raise ValueError(
            f"secure aggregation: this client has {examples} examples, more than "
            f"secagg-max-weight {config.secagg_max_weight:g}; raise secagg-max-weight"
        )
    peak = max((float(np.abs(a).max()) for a in ndarrays if a.size), default=0.0)
    weighted_peak = peak * examples / config.secagg_max_weight
    if weighted_peak > config.secagg_clipping_range:
        raise ValueError(
            f"secure aggregation: a weighted parameter reaches {weighted_peak:.4g}, beyond "
            f"secagg-clipping-range {config.secagg_clipping_range:g}; raise "
            f"secagg-clipping-range"
        )


def model_ndarrays(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's parameters as the legacy API's list (``named_parameters`` order, like
    ``common.federation.messages.model_to_arrays``)."""
    return [param.detach().cpu().numpy().copy() for _, param in model.named_parameters()]


def arrays_from_ndarrays(model: torch.nn.Module, ndarrays: Sequence[np.ndarray]) -> ArrayRecord:
    """Name a legacy parameter list after the model's parameters (``load_arrays`` checks it)."""
    names = [name for name, _ in model.named_parameters()]
    if len(names) != len(ndarrays):
        raise ValueError(f"got {len(ndarrays)} arrays for a model of {len(names)} parameters")
    return ArrayRecord(
        {name: Array(np.asarray(array)) for name, array in zip(names, ndarrays, strict=True)}
    )
