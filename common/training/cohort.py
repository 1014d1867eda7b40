"""Edge-aggregator training: one Flower client computes the local updates of many users.

The privacy and aggregation unit stays the user (a logical cross-device client); only
the Flower unit changes, because one Flower client per user costs tens of milliseconds
of framework overhead per user and round (DESIGN.md, "Scale"). Each round every user
takes part with probability ``rate`` (Poisson sampling: secret under user-level DP,
seeded otherwise; :func:`cohort_sample`), and
trains its own local update from the global model, exactly as its own client would.

Two ways to get the users' updates, chosen automatically, with the same result:

- **vectorized**: when the local update is one SGD step on the user's whole data (one
  local epoch, ``optimizer = "sgd"``, all of a user's windows in one batch), a user's
  update is ``-lr`` times its gradient. Without clipping the weighted sum of updates is
  one backward pass; with clipping, every user's exact gradient norm and the sum of the
  clipped gradients come from one pass too (:mod:`common.training.clipping`).
- **per user**: any other local training (several epochs, Adam) runs
  :func:`common.training.local.train_local` once per sampled user.

Without clipping the reply is ``sum_i n_i * update_i`` with weight ``sum_i n_i``
(``n_i`` = the user's training examples), so the server's ratio is classic FedAvg.
With clipping (user-level DP) each update is clipped to ``clip_norm`` and weighs 1:
the server adds Gaussian noise to the sum of all cohorts and divides by the expected
number of sampled users (:mod:`server.cohort_aggregation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.data.features import TrainingWindows, training_windows
from common.data.partitioning import ClientPartition
from common.federation.config import FederatedConfig
from common.models import SequenceRecommender
from common.models.base import next_item_loss
from common.privacy.randomness import privacy_randomness
from common.training.centralized import trimmed_batch
from common.training.clipping import clip_factors, clipped_gradient_sum
from common.training.local import round_seed, train_local

SCORE_BYTES_BUDGET = 256 * 2**20  # scores over all items held at once by the clipped path
MAX_GROUP_ROWS = 128  # rows per pass: small groups keep similar lengths and caches warm


@dataclass(frozen=True)
class CohortUpdate:
    """A cohort's contribution: summed updates, their weight, and what happened."""

    delta_sum: dict[str, np.ndarray]
    weight: float
    users: int
    clipped: int
    loss: float
    non_finite: int = 0  # users whose update was not finite: they contributed zero


def sampled_users(n_users: int, rate: float, seed: int, server_round: int) -> np.ndarray:
    """Seeded Poisson sampling over ALL users, for runs whose privacy does not rest on it."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"user sampling rate must be in (0, 1], got {rate}")
    if rate == 1.0:
        return np.ones(n_users, dtype=bool)
    draws = np.random.default_rng([seed, server_round, 0x5A3]).random(n_users)
    return draws < rate


def cohort_sample(
    partition: ClientPartition, config: FederatedConfig, server_round: int, n_users: int
) -> np.ndarray:
    """Indices (into ``partition.users``) of this cohort's users sampled this round.

    Under user-level DP the amplification by sampling the accountant credits holds only
    if nobody can tell who was sampled: each user's draw is secret
    (:mod:`common.privacy.randomness`). Without DP the draw is seeded over ALL users, the
    same in every process, so a cohort run and a one-client-per-user run match.
    """
    if config.dp == "user":
        randomness = privacy_randomness(
            config.insecure_reproducible_noise,
            config.seed, server_round, 0x5A3, int(partition.partition_id),
        )  # fmt: skip
        return np.flatnonzero(randomness.poisson_mask(config.fraction_train, len(partition.users)))
    mask = sampled_users(n_users, config.fraction_train, config.seed, server_round)
    return np.flatnonzero(mask[partition.users])


def vectorizable(windows: TrainingWindows, local_epochs: int, optimizer: str, batch: int) -> bool:
    """Whether every user's local training is a single SGD step on all its windows."""
    if local_epochs != 1 or optimizer != "sgd" or len(windows) == 0:
        return False
    return int(np.bincount(windows.owners).max()) <= batch


def _user_groups(windows: TrainingWindows, max_rows: int) -> list[np.ndarray]:
    """Row indices in groups of whole users, <= max_rows rows, users of similar length.

    Grouping users by their longest window lets each group drop the padding columns no
    row uses (:func:`common.training.centralized.trimmed_batch`), as length-bucketed batches do.
    """
    owners = windows.owners
    lengths = (windows.inputs > 0).sum(1)
    longest = np.zeros(int(owners.max()) + 1, dtype=np.int64)
    np.maximum.at(longest, owners, lengths)
    order = np.lexsort([owners, longest[owners]])
    boundaries = np.flatnonzero(np.diff(owners[order])) + 1
    groups: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for user_rows in np.split(order, boundaries):
        if current and size + len(user_rows) > max_rows:
            groups.append(np.concatenate(current))
            current, size = [], 0
        current.append(user_rows)
        size += len(user_rows)
    if current:
        groups.append(np.concatenate(current))
    return groups


def _examples_per_user(windows: TrainingWindows) -> np.ndarray:
    """Training targets of every owner index."""
    counts = (windows.targets > 0).sum(1)
    return np.bincount(windows.owners, weights=counts).astype(np.int64)


def summed_sgd_update(
    model: SequenceRecommender, windows: TrainingWindows, lr: float
) -> CohortUpdate:
    """``sum_i n_i * (-lr * grad L_i)`` over the users owning ``windows`` (no clipping)."""
    params = dict(model.named_parameters())
    model.train()
    model.zero_grad(set_to_none=True)
    total_loss, total_examples = 0.0, 0
    for rows in _user_groups(windows, max_rows=128):
        items, targets, gaps = trimmed_batch(windows, rows)
        examples = int((targets > 0).sum())
        loss = next_item_loss(model, items, targets, gaps) * examples
        loss.backward()
        total_loss += float(loss.detach())
        total_examples += examples
    delta = {
        name: (-lr * param.grad).numpy().copy()
        if param.grad is not None
        else np.zeros(tuple(param.shape), dtype=np.float32)
        for name, param in params.items()
    }
    users = len(np.unique(windows.owners))
    return CohortUpdate(delta, float(total_examples), users, 0, total_loss / total_examples)


def clipped_sgd_update(
    model: SequenceRecommender, windows: TrainingWindows, lr: float, clip_norm: float
) -> CohortUpdate:
    """``sum_i clip(-lr * grad L_i, clip_norm)``, exact per-user norms (tied clipping)."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    examples = _examples_per_user(windows)
    sums = {name: torch.zeros_like(param) for name, param in model.named_parameters()}
    width = windows.inputs.shape[1]
    max_rows = max(1, min(MAX_GROUP_ROWS, SCORE_BYTES_BUDGET // (4 * width * model.n_items)))
    model.train()
    total_loss, users, clipped, non_finite = 0.0, 0, 0, 0
    for rows in _user_groups(windows, max_rows):
        items, targets, gaps = trimmed_batch(windows, rows)
        owners = torch.as_tensor(windows.owners[rows])
        group_users, local = torch.unique(owners, return_inverse=True)
        weights = 1.0 / torch.as_tensor(examples[group_users.numpy()], dtype=torch.float32)
        result = clipped_gradient_sum(
            model, items, targets, gaps, local, weights[local], clip_norm, scale=lr
        )
        for name, value in result.grads.items():
            sums[name] -= lr * value
        finite = result.factors > 0
        total_loss += result.loss if bool(finite.all()) else 0.0
        users += len(group_users)
        clipped += int((finite & (result.factors < 1.0)).sum())
        non_finite += int((~finite).sum())
    delta = {name: value.numpy() for name, value in sums.items()}
    return CohortUpdate(delta, float(users), users, clipped, total_loss / max(users, 1), non_finite)


def looped_update(
    model: SequenceRecommender,
    windows: TrainingWindows,
    train_user: Callable[[SequenceRecommender, TrainingWindows, int], tuple[float, int]],
    clip_norm: float | None,
) -> CohortUpdate:
    """Train each user separately from the same start (any local optimizer or epochs).

    ``train_user(model, user_windows, owner)`` trains ``model`` in place and returns the
    user's (mean loss, example count). Without ``clip_norm`` the reply is examples-weighted.
    """
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    sums = {name: torch.zeros_like(value) for name, value in start.items()}
    weight, users, clipped, total_loss, non_finite = 0.0, 0, 0, 0.0, 0
    for owner in np.unique(windows.owners):
        rows = np.flatnonzero(windows.owners == owner)
        user_windows = TrainingWindows(
            inputs=windows.inputs[rows],
            targets=windows.targets[rows],
            gaps=windows.gaps[rows] if windows.gaps is not None else None,
            owners=windows.owners[rows],
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(start[name])
        loss, examples = train_user(model, user_windows, int(owner))
        with torch.no_grad():
            delta = {name: param - start[name] for name, param in model.named_parameters()}
            if clip_norm is None:
                scale, weight = float(examples), weight + examples
            else:
                norm = torch.stack([d.double().pow(2).sum() for d in delta.values()]).sum().sqrt()
                scale = float(clip_factors(norm.view(1), clip_norm)[0])
                clipped += int(0.0 < scale < 1.0)
                non_finite += int(scale == 0.0)
                weight += 1.0
            if scale > 0:
                for name, value in delta.items():
                    sums[name] += scale * value
        users += 1
        total_loss += loss if scale > 0 else 0.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(start[name])
    delta_sum = {name: value.numpy() for name, value in sums.items()}
    return CohortUpdate(delta_sum, weight, users, clipped, total_loss / max(users, 1), non_finite)


def train_cohort(
    model: SequenceRecommender,
    partition: ClientPartition,
    config: FederatedConfig,
    server_round: int,
    n_users: int,
) -> CohortUpdate:
    """One round of this cohort: sample users, train each user's update, sum them.

    Clipping applies when ``config.dp == "user"``; each user's randomness is seeded by
    (seed, round, global user index), as it would be on the user's own device.
    """
    chosen = cohort_sample(partition, config, server_round, n_users)
    all_sequences, times = partition.training_sequences(config.train_through_validation)
    sequences = [all_sequences[index] for index in chosen]
    windows = training_windows(
        sequences,
        config.max_len,
        [times[index] for index in chosen] if times is not None else None,
        config.n_gap_buckets,
    )
    clip_norm = config.clip_norm if config.dp == "user" else None
    if len(windows) == 0:
        zeros = {name: np.zeros(tuple(p.shape), np.float32) for name, p in model.named_parameters()}
        return CohortUpdate(zeros, 0.0, 0, 0, 0.0)
    global_users = partition.users[chosen]
    torch.manual_seed(round_seed(config.seed, server_round, int(partition.partition_id)))
    if vectorizable(windows, config.local_epochs, config.optimizer, config.batch_size):
        if clip_norm is None:
            return summed_sgd_update(model, windows, config.lr)
        return clipped_sgd_update(model, windows, config.lr, clip_norm)

    def train_user(
        user_model: SequenceRecommender, user_windows: TrainingWindows, owner: int
    ) -> tuple[float, int]:
        seed = round_seed(config.seed, server_round, int(global_users[owner]))
        return train_local(user_model, user_windows, config, seed)

    return looped_update(model, windows, train_user, clip_norm)
