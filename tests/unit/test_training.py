"""Centralized training on tiny data: learns, stops early, selects on validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import common.models.chunked_loss as chunked_loss
import common.training.centralized as centralized
from common.data.features import training_windows
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.scoring import evaluate_long_horizon
from common.models import ModelConfig, build_model
from common.training.centralized import (
    TrainConfig,
    build_optimizer,
    length_bucketed_batches,
    length_parts,
    random_batch_parts,
    train_centralized,
    trimmed_batch,
)


def cyclic_split(n_users: int = 40, n_items: int = 12, length: int = 10) -> LeaveOneOutSplit:
    """Every user walks the item cycle from a random start: next item = current + 1."""
    rng = np.random.default_rng(0)
    sequences = [
        (np.arange(start, start + length) % n_items) + 1
        for start in rng.integers(0, n_items, n_users)
    ]
    return LeaveOneOutSplit(
        train=[s[:-2] for s in sequences],
        valid_target=np.array([s[-2] for s in sequences]),
        test_target=np.array([s[-1] for s in sequences]),
        n_items=n_items,
    )


@pytest.mark.parametrize("name", ["lstm", "multiscale", "attention"])
def test_learns_a_deterministic_cycle(name: str) -> None:
    split = cyclic_split()
    model_config = ModelConfig(name=name, dim=16, layers=1, dropout=0.0, max_len=8)
    result = train_centralized(split, model_config, TrainConfig(epochs=40, lr=0.02, patience=40))
    assert result.test["hr@5"] > 0.9
    long_horizon = evaluate_long_horizon(result.model, split, model_config.max_len, k=5)
    assert long_horizon >= result.valid["hr@5"]  # the validation target is one of the two
    assert (
        result.best_epoch
        == max((r for r in result.history if r.valid), key=lambda r: r.valid["ndcg@10"]).epoch
    )


def test_early_stopping_stops_after_patience() -> None:
    split = cyclic_split()
    config = TrainConfig(epochs=50, lr=1e-9, patience=2)
    result = train_centralized(split, ModelConfig(dim=8, max_len=8), config)
    assert len(result.history) == result.best_epoch + 2


def test_bucketed_batches_cover_each_window_once_and_trim_padding() -> None:
    sequences = [np.arange(1, n + 2) for n in (1, 2, 7, 3, 8, 2)]
    windows = training_windows(sequences, max_len=8)
    batches = list(length_bucketed_batches(windows, 2, np.random.default_rng(0)))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(windows)))
    items, targets, _ = trimmed_batch(windows, batches[0])
    assert items.shape == targets.shape
    assert bool((items[:, 0] > 0).any())


def test_random_batches_cover_each_window_once_in_length_sorted_parts() -> None:
    sequences = [np.arange(1, n + 2) for n in (1, 2, 7, 3, 8, 2, 5, 1, 4)]
    windows = training_windows(sequences, max_len=8)
    lengths = (windows.inputs > 0).sum(1)
    steps = list(random_batch_parts(windows, 4, np.random.default_rng(0)))
    assert [sum(len(part) for part in parts) for parts in steps] == [4, 4, 1]
    rows = np.concatenate([part for parts in steps for part in parts])
    assert sorted(rows.tolist()) == list(range(len(windows)))
    for parts in steps:
        assert np.all(np.diff(lengths[np.concatenate(parts)]) >= 0)  # sorted by length
    other = list(random_batch_parts(windows, 4, np.random.default_rng(1)))
    assert [p.tolist() for s in steps for p in s] != [p.tolist() for s in other for p in s]


@pytest.mark.parametrize("pass_cost", [0, 3, 10, 100])
def test_length_parts_cost_least_of_all_cuts(pass_cost: int) -> None:
    lengths = np.array([1, 1, 2, 3, 3, 3, 5, 8, 8, 13])

    def cost(cuts: tuple[int, ...]) -> int:
        bounds = [0, *cuts, len(lengths)]
        return sum((b - a) * int(lengths[b - 1]) + pass_cost for a, b in itertools.pairwise(bounds))

    inner = range(1, len(lengths))
    least = min(cost(c) for k in range(len(lengths)) for c in itertools.combinations(inner, k))
    parts = length_parts(lengths, pass_cost)
    assert parts[0][0] == 0 and parts[-1][1] == len(lengths)
    assert all(left[1] == right[0] for left, right in itertools.pairwise(parts))
    assert cost(tuple(a for a, _ in parts[1:])) == least
    if pass_cost == 0:  # no pass cost: never pad, one part per length
        assert len(parts) == len(set(lengths.tolist()))


@pytest.mark.parametrize("per_window", [False, True])
def test_a_random_batch_in_parts_takes_the_whole_batch_step(
    monkeypatch: pytest.MonkeyPatch, per_window: bool
) -> None:
    sequences = [np.arange(1, n + 2) % 11 + 1 for n in (1, 2, 7, 3, 8, 2, 5, 1, 4)]
    windows = training_windows(sequences, max_len=8)
    monkeypatch.setattr(chunked_loss, "fast_bfloat16_available", lambda: False)  # exact sums
    moved = {}
    monkeypatch.setattr(centralized, "PASS_POSITIONS", 0)  # one part per length
    for batching in ("length", "random"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(dim=8, max_len=8, dropout=0.0), 12)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        centralized.train_epoch(model, optimizer, windows, len(windows),
                                np.random.default_rng(0), per_window=per_window,
                                batching=batching)  # fmt: skip
        moved[batching] = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    for whole, parts in zip(moved["length"], moved["random"], strict=True):
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-6)
    assert any(bool(step.abs().max() > 0) for step in moved["random"])


def test_random_batches_learn_the_cycle() -> None:
    split = cyclic_split()
    model_config = ModelConfig(dim=16, layers=1, dropout=0.0, max_len=8)
    config = TrainConfig(epochs=40, lr=0.02, patience=40, batching="random", beta2=0.99)
    assert train_centralized(split, model_config, config).test["hr@5"] > 0.9


def test_learning_rate_falls_when_validation_stalls() -> None:
    split = cyclic_split()
    config = TrainConfig(epochs=6, lr=1e-12, patience=10, lr_patience=1, lr_factor=0.5)
    result = train_centralized(split, ModelConfig(dim=8, max_len=8), config)
    rates = [record.lr for record in result.history]
    assert rates[0] == pytest.approx(1e-12)
    assert rates[-1] < rates[0]
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:], strict=False))


def test_bad_schedule_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="lr_factor"):
        TrainConfig(lr_factor=1.5)


def test_adamw_decays_matrices_and_embeddings_but_not_biases_or_norms() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=8, max_len=8), 12)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        factor = 1.0 - 0.1 * 0.5 if parameter.ndim >= 2 else 1.0
        assert torch.allclose(parameter, before[name] * factor), name
    assert isinstance(optimizer, torch.optim.AdamW)


def test_label_smoothing_still_learns_the_cycle() -> None:
    split = cyclic_split()
    model_config = ModelConfig(dim=16, layers=1, dropout=0.0, max_len=8, norm="pre")
    config = TrainConfig(epochs=40, lr=0.02, patience=40, label_smoothing=0.1)
    result = train_centralized(split, model_config, config)
    assert result.test["hr@5"] > 0.9
    assert result.history[-1].train_loss > 0.1 * np.log(12)  # smoothing keeps a floor


@pytest.mark.parametrize("name", ["lstm", "attention"])
def test_prefix_windows_learn_the_cycle(name: str) -> None:
    split = cyclic_split()
    model_config = ModelConfig(name=name, dim=16, layers=1, dropout=0.0, max_len=8)
    config = TrainConfig(epochs=15, lr=0.02, patience=15, windows="prefix")
    assert train_centralized(split, model_config, config).test["hr@5"] > 0.9


def test_bad_optimizer_smoothing_and_device_are_rejected() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw, got 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        TrainConfig(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="device must be like cpu or cuda:0, got 'gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="windows must be one of sequence, prefix, got 'all'"):
        TrainConfig(windows="all")
    with pytest.raises(ValueError, match="batching must be one of length, random, got 'lazy'"):
        TrainConfig(batching="lazy")
    with pytest.raises(ValueError, match=r"beta2 must be in \(0, 1\), got 1.0"):
        TrainConfig(beta2=1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'cuda' asked for, but CUDA is not available"):
        train_centralized(cyclic_split(), ModelConfig(dim=8, max_len=8), TrainConfig(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_and_evaluates_on_cuda() -> None:
    split = cyclic_split()
    model_config = ModelConfig(dim=16, layers=1, dropout=0.0, max_len=8)
    config = TrainConfig(epochs=40, lr=0.02, patience=40, device="cuda")
    result = train_centralized(split, model_config, config)
    assert result.model.items.weight.is_cuda
    assert result.test["hr@5"] > 0.9
