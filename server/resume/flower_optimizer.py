"""The server optimizer's state inside Flower's strategies: the one place that reads it.

Flower 1.41's strategies have no public state API, so saving a run reads (and resuming
writes back) their attributes: FedAdam / FedYogi (:class:`FedOpt`) keep ``m_t`` and
``v_t``, FedAvgM its ``momentum_vector``. ``tests/unit/test_resumption.py`` fails if a
Flower upgrade renames them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from server.resume.state import ResumeError


def optimizer_state(strategy: Strategy, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The server optimizer's state inside Flower's strategy (innermost of the wrappers).

    FedAdam and FedYogi (:class:`FedOpt`) keep ``m_t`` and ``v_t`` (name -> array), FedAvgM
    its ``momentum_vector`` (a list in the order of the model's array ``names``); FedAvg
    and FedProx none. The arrays each strategy keeps for the round are set from the
    round's model when the next round is configured, so they need no saving.
    """
    inner = innermost(strategy)
    moments: dict[str, dict[str, Any]] = {}
    if isinstance(inner, FedOpt):
        moments = {name: getattr(inner, name) for name in ("m_t", "v_t") if getattr(inner, name)}
    if isinstance(inner, FedAvgM) and inner.momentum_vector is not None:
        moments = {"momentum_vector": dict(zip(names, inner.momentum_vector, strict=True))}
    return {
        name: {key: torch.from_numpy(np.array(value)) for key, value in arrays.items()}
        for name, arrays in moments.items()
    }


def restore_optimizer(
    strategy: Strategy, saved: Mapping[str, Mapping[str, torch.Tensor]], names: list[str]
) -> None:
    """Put :func:`optimizer_state`'s arrays back; ``names`` are the model's array names."""
    inner = innermost(strategy)
    for name, tensors in saved.items():
        if sorted(tensors) != sorted(names):
            raise ResumeError(f"the saved {name} does not hold the model's arrays")
        arrays = {key: tensors[key].numpy().copy() for key in names}
        if isinstance(inner, FedOpt) and name in ("m_t", "v_t"):
            setattr(inner, name, arrays)
        elif isinstance(inner, FedAvgM) and name == "momentum_vector":
            inner.momentum_vector = list(arrays.values())
        else:
            raise ResumeError(
                f"the saved server state holds {name!r}, which {type(inner).__name__} lacks"
            )


def innermost(strategy: Strategy) -> Strategy:
    """Flower's own strategy under our wrappers (each holds the next as ``.strategy``)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy
