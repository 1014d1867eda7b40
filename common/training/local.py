"""A client's local training: epochs of plain (or FedProx) training from the global model."""

from __future__ import annotations

import numpy as np
import torch

from common.data.features import TrainingWindows
from common.federation.config import FederatedConfig
from common.models import SequenceRecommender
from common.training.centralized import train_epoch


def train_local(
    model: SequenceRecommender,
    windows: TrainingWindows,
    config: FederatedConfig,
    seed: int,
    proximal_mu: float = 0.0,
) -> tuple[float, int]:
    """``local-epochs`` passes over the client's windows; returns (mean loss, examples).

    An example is one next-item prediction (a non-padding target). With
    ``proximal_mu > 0`` the FedProx term ``mu / 2 * ||w - w_global||^2`` is added
    through its gradient just before each optimizer step; the reported loss excludes it.
    """
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    examples = int((windows.targets > 0).sum())
    if examples == 0:
        return 0.0, 0
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=config.lr)
        if config.optimizer == "adam"
        else torch.optim.SGD(params, lr=config.lr)
    )
    if proximal_mu > 0:
        anchors = [p.detach().clone() for p in params]

        def add_proximal_gradient(*_: object) -> None:
            with torch.no_grad():
                for param, anchor in zip(params, anchors, strict=True):
                    if param.grad is not None:
                        param.grad.add_(param - anchor, alpha=proximal_mu)

        optimizer.register_step_pre_hook(add_proximal_gradient)
    losses = [
        train_epoch(model, optimizer, windows, config.batch_size, rng)
        for _ in range(config.local_epochs)
    ]
    return float(np.mean(losses)), examples


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed for one client in one round."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])
