"""Edge-aggregator cohorts: every user's update, vectorized or looped, equals its own client's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.features import TrainingWindows, training_windows
from common.data.partitioning import load_partition, load_split
from common.federation.config import FederatedConfig
from common.models import ModelConfig, SequenceRecommender, build_model
from common.training import cohort
from common.training.cohort import (
    clipped_sgd_update,
    looped_update,
    sampled_users,
    summed_sgd_update,
    train_cohort,
    vectorizable,
)
from common.training.local import round_seed, train_local

CONFIG = {"model": "attention", "dim": 8, "max-len": 6, "dropout": 0.0, "optimizer": "sgd",
          "lr": 0.5, "local-epochs": 1, "batch-size": 64}  # fmt: skip


def tiny_model(n_items: int, name: str = "attention") -> SequenceRecommender:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, dim=8, layers=1, dropout=0.0, max_len=6), n_items)


def per_user_reference(
    model: SequenceRecommender, windows: TrainingWindows, config: FederatedConfig,
    clip_norm: float | None,
) -> tuple[dict[str, torch.Tensor], float]:  # fmt: skip
    """What separate clients would send: each user's local update, summed and weighted."""
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in start.items()}
    weight = 0.0
    for owner in np.unique(windows.owners):
        rows = windows.owners == owner
        user = TrainingWindows(
            windows.inputs[rows], windows.targets[rows], None, windows.owners[rows]
        )
        local = tiny_model(model.n_items)
        local.load_state_dict(model.state_dict())
        _, examples = train_local(local, user, config, seed=int(owner))
        delta = {n: p.detach() - start[n] for n, p in local.named_parameters()}
        if clip_norm is None:
            scale, weight = float(examples), weight + examples
        else:
            norm = float(torch.sqrt(sum(d.pow(2).sum() for d in delta.values())))
            scale, weight = min(1.0, clip_norm / norm), weight + 1
        for n in total:
            total[n] += scale * delta[n]
    return total, weight


@pytest.fixture(autouse=True)
def exact_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 scores everywhere: bfloat16 products would differ between batchings."""
    monkeypatch.setattr("common.models.chunked_loss.fast_bfloat16_available", lambda: False)


@pytest.fixture
def cycle_windows(cycle_log: Path) -> tuple[TrainingWindows, int]:
    split = load_split(str(cycle_log))
    return training_windows(split.train, max_len=6, n_gap_buckets=0), split.n_items


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_vectorized_updates_equal_separate_clients(
    cycle_windows: tuple[TrainingWindows, int],
    clip_norm: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # float32 scores in the clipped path: its bfloat16 rounding differs from the reference
    monkeypatch.setattr("common.training.clipping.PRODUCT_DTYPE", torch.float32)
    windows, n_items = cycle_windows
    config = FederatedConfig.from_run_config(CONFIG)
    model = tiny_model(n_items)
    assert vectorizable(windows, 1, "sgd", config.batch_size)
    reference, weight = per_user_reference(model, windows, config, clip_norm)

    if clip_norm is None:
        update = summed_sgd_update(model, windows, config.lr)
    else:
        update = clipped_sgd_update(model, windows, config.lr, clip_norm)

    assert update.weight == pytest.approx(weight)
    assert update.users == len(np.unique(windows.owners))
    for name, value in reference.items():
        np.testing.assert_allclose(update.delta_sum[name], value.numpy(), rtol=2e-3, atol=2e-5)
    if clip_norm is not None:
        assert update.clipped == update.users  # 0.05 is below every user's update norm


def test_looped_updates_equal_separate_clients_with_adam(
    cycle_windows: tuple[TrainingWindows, int],
) -> None:
    windows, n_items = cycle_windows
    config = FederatedConfig.from_run_config({**CONFIG, "optimizer": "adam", "lr": 0.01,
                                              "local-epochs": 3, "batch-size": 1})  # fmt: skip
    model = tiny_model(n_items)
    assert not vectorizable(windows, 3, "adam", 1)
    reference, weight = per_user_reference(model, windows, config, clip_norm=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    update = looped_update(
        model, windows, lambda m, w, owner: train_local(m, w, config, seed=owner), clip_norm=0.01
    )

    assert update.weight == weight
    for name, value in reference.items():
        np.testing.assert_allclose(update.delta_sum[name], value.numpy(), rtol=1e-4, atol=1e-6)
    for name, param in model.named_parameters():  # the global model is left untouched
        assert torch.equal(param, before[name])


def test_poisson_sampling_is_seeded_and_has_the_requested_rate() -> None:
    first = sampled_users(20_000, 0.1, seed=7, server_round=3)
    assert np.array_equal(first, sampled_users(20_000, 0.1, seed=7, server_round=3))
    assert not np.array_equal(first, sampled_users(20_000, 0.1, seed=7, server_round=4))
    assert abs(first.mean() - 0.1) < 0.01
    assert sampled_users(5, 1.0, 0, 1).all()
    with pytest.raises(ValueError, match="sampling rate"):
        sampled_users(5, 0.0, 0, 1)


def test_cohorts_partition_the_users_of_one_round(cycle_log: Path) -> None:
    config = FederatedConfig.from_run_config(
        {
            **CONFIG,
            "dataset": str(cycle_log),
            "partition-mode": "cohort",
            "users-per-client": 7,
            "fraction-train": 0.5,
        }  # fmt: skip
    )
    split = load_split(config.dataset)
    n_parts = config.num_partitions(split.n_users)
    mask = sampled_users(split.n_users, 0.5, config.seed, server_round=2)

    users = 0
    for pid in range(n_parts):
        partition = load_partition(config.dataset, n_parts, pid, config.seed)
        update = train_cohort(tiny_model(split.n_items), partition, config, 2, split.n_users)
        users += update.users
        assert update.users == int(mask[partition.users].sum())

    assert users == int(mask.sum()) > 0
    assert round_seed(1, 2, 3) != round_seed(1, 2, 4)


@pytest.mark.parametrize("through", [False, True])
def test_a_cohort_trains_through_the_validation_items_only_when_asked(
    cycle_log: Path, monkeypatch: pytest.MonkeyPatch, through: bool
) -> None:
    config = FederatedConfig.from_run_config(
        {
            **CONFIG,
            "dataset": str(cycle_log),
            "partition-mode": "cohort",
            "users-per-client": 20,
            "fraction-train": 1.0,
            "train-through-validation": through,
        }  # fmt: skip
    )
    split = load_split(config.dataset)
    partition = load_partition(config.dataset, 1, 0, config.seed)
    seen: list[list[np.ndarray]] = []
    windows = cohort.training_windows

    def recorded(sequences: list[np.ndarray], *args: object) -> TrainingWindows:
        seen.append(sequences)
        return windows(sequences, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(cohort, "training_windows", recorded)
    train_cohort(tiny_model(split.n_items), partition, config, 1, split.n_users)

    (sequences,) = seen
    source = partition.split.inputs("test") if through else partition.split.train
    assert [s.tolist() for s in sequences] == [source[i].tolist() for i in range(len(source))]
    lengths = [len(s) - len(t) for s, t in zip(sequences, partition.split.train, strict=True)]
    assert set(lengths) == ({1} if through else {0})  # the validation item, never the test item
