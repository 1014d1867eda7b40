"""Local DP-SGD: Opacus's step with secret noise, and the release it reports is what it ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import common.models.grad_samplers  # noqa: F401  (our layers' samplers, for Opacus)
from common.data.features import training_windows
from common.data.partitioning import load_split
from common.models import ModelConfig, build_model
from common.privacy.randomness import PrivacyRandomness, privacy_randomness
from common.training.dp_sgd import protected_unit, sampling_rate, steps_per_epoch, train_local_dp


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
                                   seed=3, randomness=PrivacyRandomness())  # fmt: skip

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
                       noise_multiplier=0.0, clip_norm=1.0, seed=0,
                       randomness=PrivacyRandomness())  # fmt: skip


@pytest.mark.parametrize("name", ["lstm", "multiscale", "attention"])
def test_a_dp_sgd_step_equals_opacus_make_private(
    cycle_log: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same clipping, averaging and noise scale as Opacus's own DP-SGD step.

    Sampling rate 1 (one batch of every window) so both take the same batch; noise is
    compared through its standard deviation, since the two draw it differently (ours from
    a fixed test seed: 240 secret draws would miss the 10% band about 3% of the time). Scores in
    float32 as Opacus computes them (by default they may be bfloat16 products).
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from common.models.base import row_cross_entropy

    monkeypatch.setattr("common.training.clipping.PRODUCT_DTYPE", torch.float32)
    split = load_split(str(cycle_log))
    windows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    config = ModelConfig(name=name, dim=8, layers=1, dropout=0.0, max_len=6)
    updates = []
    for noise in (1e-9, 2.0):
        torch.manual_seed(0)
        ours = build_model(config, split.n_items)
        start = {n: p.detach().clone() for n, p in ours.named_parameters()}
        train_local_dp(ours, windows, epochs=1, batch_size=len(windows), lr=1.0,
                       optimizer_name="sgd", noise_multiplier=noise, clip_norm=0.05,
                       seed=1, randomness=PrivacyRandomness([1]))  # fmt: skip
        updates.append({n: p.detach() - start[n] for n, p in ours.named_parameters()})

    torch.manual_seed(0)
    model = build_model(config, split.n_items)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = TensorDataset(torch.as_tensor(windows.inputs), torch.as_tensor(windows.targets))
    loader = DataLoader(data, batch_size=len(windows))
    private, optimizer, dp_loader = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=loader, noise_multiplier=1e-9, max_grad_norm=0.05,
        poisson_sampling=False,
    )  # fmt: skip
    items, targets = next(iter(dp_loader))
    row_loss = row_cross_entropy(model, private(items), targets)
    (row_loss / (targets > 0).sum(1)).mean().backward()
    optimizer.step()
    private._close()
    for name_, param in model.named_parameters():  # ours clips 1e-4 below (CLIP_MARGIN)
        torch.testing.assert_close(updates[0][name_], param.detach() - start[name_],
                                   rtol=3e-4, atol=1e-6)  # fmt: skip
    # noise: std of (noisy - noiseless) update is noise * clip / batch size, per coordinate
    table = (updates[1]["items.weight"] - updates[0]["items.weight"])[1:]
    expected = 2.0 * 0.05 / len(windows)
    assert float(table.std()) == pytest.approx(expected, rel=0.1)


def _noisy_update(cycle_log: Path, insecure: bool) -> torch.Tensor:
    """The item table after one DP-SGD epoch from a fixed start with seed 5."""
    split = load_split(str(cycle_log))
    windows = training_windows(split.train, max_len=6, n_gap_buckets=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lstm", dim=8, layers=1, dropout=0.0, max_len=6),
                        split.n_items)  # fmt: skip
    train_local_dp(model, windows, epochs=1, batch_size=8, lr=0.1, optimizer_name="sgd",
                   noise_multiplier=1.0, clip_norm=1.0, seed=5,
                   randomness=privacy_randomness(insecure, 5, 0x0DB))  # fmt: skip
    return model.items.weight.detach().clone()


def test_the_same_seed_twice_gives_two_different_noisy_updates(cycle_log: Path) -> None:
    """Red team: whoever knows the seed cannot replay a client's noise or batches."""
    assert not torch.equal(_noisy_update(cycle_log, False), _noisy_update(cycle_log, False))


def test_only_the_insecure_test_setting_replays_the_noise(cycle_log: Path) -> None:
    assert torch.equal(_noisy_update(cycle_log, True), _noisy_update(cycle_log, True))
