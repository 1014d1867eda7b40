"""Local DP-SGD: Opacus trains the model, and the release it reports is what it ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.features import training_windows
from common.local_dp import protected_unit, sampling_rate, steps_per_epoch, train_local_dp
from common.models import ModelConfig, build_model
from common.partitioning import load_split


@pytest.mark.parametrize("name", ["lstm", "multiscale", "attention"])
def test_dp_sgd_trains_every_model_and_reports_its_release(cycle_log: Path, name: str) -> None:
    split = load_split(str(cycle_log))
    windows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, dim=8, layers=1, dropout=0.0, max_len=6),
                        split.n_items)  # fmt: skip
    before = model.items.weight.detach().clone()

    loss, release = train_local_dp(model, windows, epochs=2, batch_size=8, lr=0.05,
                                   optimizer_name="sgd", noise_multiplier=1.1, clip_norm=1.0,
                                   seed=3)  # fmt: skip

    assert np.isfinite(loss) and loss > 0
    assert not torch.equal(before, model.items.weight)
    assert release.noise_multiplier == 1.1
    assert release.sampling_rate == pytest.approx(1 / np.ceil(len(windows) / 8))
    assert release.steps == 2 * steps_per_epoch(windows, 8)
    assert not hasattr(model.items.weight, "grad_sample")  # hooks and samples are gone


def test_unit_is_user_only_when_every_user_has_one_window(cycle_log: Path) -> None:
    split = load_split(str(cycle_log))
    assert protected_unit(training_windows(split.train, max_len=20, n_gap_buckets=0)) == "user"
    assert protected_unit(training_windows(split.train, max_len=4, n_gap_buckets=0)) == "window"
    one = training_windows(split.train[:1], max_len=20, n_gap_buckets=0)
    assert sampling_rate(one, 64) == 1.0


def test_dp_sgd_refuses_no_noise(cycle_log: Path) -> None:
    split = load_split(str(cycle_log))
    windows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    model = build_model(ModelConfig(name="lstm", dim=8, layers=1, max_len=6), split.n_items)
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        train_local_dp(model, windows, epochs=1, batch_size=8, lr=0.1, optimizer_name="sgd",
                       noise_multiplier=0.0, clip_norm=1.0, seed=0)  # fmt: skip
