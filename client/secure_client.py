"""Client side of secure aggregation: a legacy NumPyClient behind Flower's ``secaggplus_mod``.

In flwr 1.41 SecAgg+ exists only on the legacy API, and one ClientApp cannot hold both
Message API handlers and a ``client_fn``. So :data:`secure_client_app` is a second,
legacy ClientApp; the main app's train handler hands every message to it when the run
config sets ``secure-aggregation`` (:func:`uses_secure_aggregation`). The mod runs the
four protocol stages and, in the third, calls :meth:`SequenceClient.fit` and masks its
result before anything leaves the node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from common.federation.config import FederatedConfig
from common.federation.messages import PROXIMAL_MU, SERVER_ROUND, TRAIN_LOSS, load_arrays
from common.federation.node_partition import client_partition
from common.federation.run_model import run_model
from common.federation.secure_aggregation import (
    arrays_from_ndarrays,
    check_weighted_range,
    model_ndarrays,
)
from common.training.local import round_seed, train_local


def uses_secure_aggregation(context: Context) -> bool:
    """Whether this run's config turns secure aggregation on."""
    return FederatedConfig.from_run_config(context.run_config).secure_aggregation


class SequenceClient(NumPyClient):
    """Local training on this node's users; the same steps as the Message API client."""

    def __init__(self, context: Context) -> None:
        self.run_context = context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train from the global arrays; the mod masks the returned arrays and weight."""
        federated = FederatedConfig.from_run_config(self.run_context.run_config)
        torch.set_num_threads(federated.client_threads)
        partition = client_partition(federated, self.run_context.node_config)
        model = run_model(federated, partition.split.n_items)
        load_arrays(model, arrays_from_ndarrays(model, parameters))
        windows = partition.training_windows(
            federated.max_len, federated.n_gap_buckets, federated.train_through_validation
        )
        seed = round_seed(federated.seed, int(config[SERVER_ROUND]), partition.partition_id)
        proximal_mu = float(config.get(PROXIMAL_MU, 0.0))
        loss, examples = train_local(model, windows, federated, seed, proximal_mu)
        ndarrays = model_ndarrays(model)
        check_weighted_range(examples, ndarrays, federated)
        return ndarrays, examples, {TRAIN_LOSS: loss}


def client_fn(context: Context) -> Client:
    """A fresh legacy client for one message."""
    return SequenceClient(context).to_client()


secure_client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
