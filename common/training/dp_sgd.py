"""Local DP-SGD on a client with Opacus: clipped per-sample gradients plus Gaussian noise.

One sample is one training window (:func:`common.data.features.training_windows`). When no
user on the client has more than one window (``max-len`` at least as long as every
training sequence), a window is a user's whole history and the guarantee is user-level
for that client's updates; :func:`protected_unit` says which holds.

Batches are Poisson-sampled with rate ``batch_size / windows`` (Opacus's
``DPDataLoader``), so the accountant may use amplification by sampling. The caller keeps
the accountant's history across rounds (Flower ``context.state``) and composes every
release; this module only trains and reports what it released.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader, TensorDataset

from common.data.features import TrainingWindows
from common.models import SequenceRecommender
from common.privacy.accounting import Release
from common.training.centralized import trimmed_batch
from common.training.clipping import clipped_gradient_sum


def steps_per_epoch(windows: TrainingWindows, batch_size: int) -> int:
    """Optimizer steps in one local epoch: Opacus keeps the plain loader's batch count."""
    if len(windows) == 0:
        raise ValueError("no training windows")
    return math.ceil(len(windows) / batch_size)


def sampling_rate(windows: TrainingWindows, batch_size: int) -> float:
    """Poisson sampling rate of one DP-SGD step, as Opacus's ``DPDataLoader`` sets it."""
    return 1.0 / steps_per_epoch(windows, batch_size)


def protected_unit(windows: TrainingWindows) -> str:
    """'user' when every user contributes at most one window, else 'window'."""
    if len(windows) and int(np.bincount(windows.owners).max()) <= 1:
        return "user"
    return "window"


def train_local_dp(
    model: SequenceRecommender,
    windows: TrainingWindows,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer_name: str,
    noise_multiplier: float,
    clip_norm: float,
    seed: int,
) -> tuple[float, Release]:
    """DP-SGD for ``epochs`` local epochs; returns (mean loss, the release to account).

    Opacus samples the batches (``DPDataLoader``, Poisson) and adds the noise and the
    averaging (``DPOptimizer``); the per-sample clipping is exact but computed without
    per-sample item-table gradients (:mod:`common.training.clipping`), which Opacus would
    materialize for our tied table and which made DP-SGD 4-5x slower than plain training.
    """
    if noise_multiplier <= 0 or clip_norm <= 0:
        raise ValueError("local DP-SGD needs noise_multiplier > 0 and clip_norm > 0")
    rate = sampling_rate(windows, batch_size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # batches of window indices: the windows themselves come trimmed of shared padding
    indices = TensorDataset(torch.arange(len(windows)))
    loader = DataLoader(indices, batch_size=batch_size, generator=generator)
    dp_loader = DPDataLoader.from_data_loader(loader, generator=generator)
    if abs(dp_loader.sample_rate - rate) > 1e-12:
        raise RuntimeError(f"accounted rate {rate} differs from Opacus's {dp_loader.sample_rate}")
    params = dict(model.named_parameters())
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params.values(), lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(params.values(), lr=lr)
    )
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm,
        expected_batch_size=int(len(windows) * rate),  # as Opacus's PrivacyEngine sets it
        loss_reduction="mean",
    )
    model.train()
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for batch in dp_loader:
            if len(batch[0]) == 0:  # an empty Poisson batch still releases noise
                sums = {name: torch.zeros_like(param) for name, param in params.items()}
            else:
                items, targets, gaps = trimmed_batch(windows, batch[0].numpy())
                result = clipped_gradient_sum(
                    model, items, targets, gaps,
                    row_units=torch.arange(len(items)),
                    row_weights=1.0 / (targets > 0).sum(1).clamp(min=1),
                    clip_norm=clip_norm,
                )  # fmt: skip
                sums = result.grads
                losses.append(result.loss / len(items))
            for name, param in params.items():
                param.summed_grad = sums[name]  # type: ignore[attr-defined]
            dp_optimizer.add_noise()  # p.grad = summed_grad + N(0, (noise * clip)^2)
            for param in params.values():
                param.grad /= dp_optimizer.expected_batch_size  # type: ignore[operator]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    for param in params.values():
        param.summed_grad = None  # type: ignore[attr-defined]
    return float(np.mean(losses)) if losses else 0.0, Release(noise_multiplier, rate, steps)
