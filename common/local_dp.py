"""Local DP-SGD on a client with Opacus: clipped per-sample gradients plus Gaussian noise.

One sample is one training window (:func:`common.features.training_windows`). When no
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
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from common.features import TrainingWindows
from common.models import SequenceRecommender
from common.models.base import row_cross_entropy


@dataclass(frozen=True)
class LocalRelease:
    """What one local training call released: Gaussian noise, sampling rate, steps."""

    noise_multiplier: float
    sampling_rate: float
    steps: int


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


def _dataset(windows: TrainingWindows) -> TensorDataset:
    tensors = [torch.as_tensor(windows.inputs), torch.as_tensor(windows.targets)]
    if windows.gaps is not None:
        tensors.append(torch.as_tensor(windows.gaps))
    return TensorDataset(*tensors)


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
) -> tuple[float, LocalRelease]:
    """DP-SGD for ``epochs`` local epochs; returns (mean loss, the release to account)."""
    if noise_multiplier <= 0 or clip_norm <= 0:
        raise ValueError("local DP-SGD needs noise_multiplier > 0 and clip_norm > 0")
    rate = sampling_rate(windows, batch_size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(_dataset(windows), batch_size=batch_size, generator=generator)
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr)
    )
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG and full backward hooks
        private, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip_norm,
            poisson_sampling=True,
        )
    if abs(dp_loader.sample_rate - rate) > 1e-12:  # type: ignore[attr-defined]
        raise RuntimeError(f"accounted rate {rate} differs from Opacus's {dp_loader.sample_rate}")  # type: ignore[attr-defined]
    private.train()
    losses: list[float] = []
    steps = 0
    try:
        for _ in range(epochs):
            for batch in dp_loader:
                dp_optimizer.zero_grad(set_to_none=True)
                if len(batch[0]) == 0:  # an empty Poisson batch still releases noise
                    for param in private.parameters():
                        param.grad_sample = torch.zeros((0, *param.shape))  # type: ignore[attr-defined]
                else:
                    gaps = batch[2] if len(batch) > 2 else None
                    row_loss = row_cross_entropy(model, private(batch[0], gaps), batch[1])
                    loss = (row_loss / (batch[1] > 0).sum(1).clamp(min=1)).mean()
                    loss.backward()
                    losses.append(float(loss.detach()))
                dp_optimizer.step()
                steps += 1
    finally:
        private._close()
    return float(np.mean(losses)) if losses else 0.0, LocalRelease(noise_multiplier, rate, steps)
