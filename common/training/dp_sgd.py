"""Local DP-SGD on a client with Opacus: clipped per-sample gradients plus Gaussian noise.

One sample is one training window (:func:`common.data.features.training_windows`). When no
user on the client has more than one window (``max-len`` at least as long as every
training sequence), a window is a user's whole history and the guarantee is user-level
for that client's updates; :func:`protected_unit` says which holds.

Batches are Poisson-sampled with rate ``1 / steps_per_epoch`` (as Opacus's
``DPDataLoader``), so the accountant may use amplification by sampling. Sampling and
noise are secret (:mod:`common.privacy.randomness`, the noise drawn by
:mod:`common.privacy.mechanism`): Opacus's ``secure_mode`` needs
torchcsprng, which does not build for our torch, so this module draws them itself with
Opacus's recipe and leaves Opacus the accounting. The caller keeps
the accountant's history across rounds (Flower ``context.state``) and composes every
release; this module only trains and reports what it released.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.data.features import TrainingWindows
from common.models import SequenceRecommender
from common.privacy.accounting import Release
from common.privacy.mechanism import GaussianMechanism
from common.privacy.randomness import PrivacyRandomness
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
    randomness: PrivacyRandomness,
) -> tuple[float, Release]:
    """DP-SGD for ``epochs`` local epochs; returns (mean loss, the release to account).

    Every step Poisson-samples windows with rate ``1 / steps_per_epoch`` (as Opacus's
    ``DPDataLoader``), sums their exactly clipped gradients (computed without per-sample
    item-table gradients, :mod:`common.training.clipping`, which made Opacus 4-5x slower
    for our tied table), adds Gaussian noise of std ``noise_multiplier * clip_norm`` and
    divides by the expected batch size (as Opacus's ``DPOptimizer``). Batches and noise
    come from ``randomness`` (secret unless a test asks otherwise); ``seed`` drives only
    dropout.
    """
    if noise_multiplier <= 0 or clip_norm <= 0:
        raise ValueError("local DP-SGD needs noise_multiplier > 0 and clip_norm > 0")
    rate = sampling_rate(windows, batch_size)
    torch.manual_seed(seed)
    params = dict(model.named_parameters())
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params.values(), lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(params.values(), lr=lr)
    )
    expected_batch = int(len(windows) * rate)  # as Opacus's PrivacyEngine sets it
    mechanism = GaussianMechanism(noise_multiplier * clip_norm, randomness)
    model.train()
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch(windows, batch_size)):
            rows = np.flatnonzero(randomness.poisson_mask(rate, len(windows)))
            sums, loss = _clipped_sum(model, windows, rows, clip_norm)
            if loss is not None:
                losses.append(loss)
            for name, param in params.items():  # an empty batch still releases noise
                noise = mechanism.noise(tuple(param.shape))
                param.grad = (sums[name] + torch.from_numpy(noise)) / expected_batch
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return float(np.mean(losses)) if losses else 0.0, Release(noise_multiplier, rate, steps)


def _clipped_sum(
    model: SequenceRecommender, windows: TrainingWindows, rows: np.ndarray, clip_norm: float
) -> tuple[dict[str, torch.Tensor], float | None]:
    """Sum of the per-window clipped gradients of ``rows`` and their mean loss (None if empty)."""
    if len(rows) == 0:
        return {name: torch.zeros_like(p) for name, p in model.named_parameters()}, None
    items, targets, gaps = trimmed_batch(windows, rows)
    result = clipped_gradient_sum(
        model, items, targets, gaps,
        row_units=torch.arange(len(items)),
        row_weights=1.0 / (targets > 0).sum(1).clamp(min=1),
        clip_norm=clip_norm,
    )  # fmt: skip
    return result.grads, result.loss / len(items)
