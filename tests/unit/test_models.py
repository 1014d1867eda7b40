"""Model zoo: shapes, tied scores, exact per-sample gradients under Opacus."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from opacus import PrivacyEngine
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct
from torch import Tensor, nn

import common.models.grad_samplers  # noqa: F401  (our layers' samplers, for Opacus)
from common.models import (
    MODEL_NAMES,
    ModelConfig,
    build_model,
    chunked_loss,
    next_item_loss,
    recurrent,
)
from common.models.multiscale import TapConv1d, tap_conv_grad_sample
from tests.helpers import ItemLogits

N_ITEMS = 11


def tiny_batch() -> Tensor:
    torch.manual_seed(0)
    items = torch.randint(1, N_ITEMS + 1, (4, 6))
    items[0, :3] = 0
    items[1, :5] = 0
    return items


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_per_sample_gradients_match_micro_batches(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_recompute(*_args: object) -> None:
        raise AssertionError("LSTM inputs require grad: the captured deltas must be used")

    monkeypatch.setattr(recurrent, "_recomputed_deltas", no_recompute)
    torch.manual_seed(0)
    config = ModelConfig(name=name, dim=8, layers=2, heads=2, dropout=0.0, max_len=6)
    model = build_model(config, N_ITEMS)
    assert check_per_sample_gradients_are_correct(
        tiny_batch(), ItemLogits(model), batch_first=True, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_scores_cover_all_items_and_mask_padding(name: str) -> None:
    model = build_model(ModelConfig(name=name, dim=8, max_len=6), N_ITEMS).eval()
    scores = model.scores(tiny_batch())
    assert scores.shape == (4, N_ITEMS + 1)
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_reads_zeros_whatever_row_zero_holds(name: str) -> None:
    # Prepare: DP noise has moved the padding row away from zero
    model = build_model(ModelConfig(name=name, dim=8, max_len=6), N_ITEMS).eval()
    clean = model.scores(tiny_batch())
    with torch.no_grad():
        model.items.weight[0] = torch.randn(8) * 5
    # Execute
    noisy = model.scores(tiny_batch())
    # Assert: left-padded rows score exactly as before
    torch.testing.assert_close(noisy, clean)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_and_gathered_losses_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_loss, "fast_bfloat16_available", lambda: False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, dim=8, max_len=6, dropout=0.0), N_ITEMS)
    items = tiny_batch()
    targets = torch.roll(items, -1, dims=1) * (items > 0)
    targets[:, -1] = 1
    rows_equal_length = items[2:]
    gathered = next_item_loss(model, rows_equal_length, targets[2:])
    dense = next_item_loss(model, rows_equal_length, targets[2:], per_sample=True)
    assert torch.allclose(gathered, dense, atol=1e-6)


def test_per_window_weighting_equals_the_per_sample_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: windows of different lengths, so the two weightings differ
    monkeypatch.setattr(chunked_loss, "fast_bfloat16_available", lambda: False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lstm", dim=8, max_len=6, dropout=0.0), N_ITEMS)
    items = tiny_batch()
    targets = torch.roll(items, -1, dims=1) * (items > 0)
    targets[:, -1] = 1
    # Execute
    per_window = next_item_loss(model, items, targets, per_window=True)
    per_position = next_item_loss(model, items, targets)
    per_sample = next_item_loss(model, items, targets, per_sample=True)
    # Assert: every window weighs alike, its positions averaged
    assert torch.allclose(per_window, per_sample, atol=1e-6)
    assert not torch.allclose(per_window, per_position, atol=1e-4)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_attention_layouts_have_exact_per_sample_gradients(norm: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        name="attention", dim=8, heads=2, dropout=0.0, max_len=6, ffn_multiplier=4, norm=norm
    )
    model = build_model(config, N_ITEMS)
    assert tuple(model.state_dict()["blocks.0.feed_forward.0.weight"].shape) == (32, 8)
    assert check_per_sample_gradients_are_correct(
        tiny_batch(), ItemLogits(model), batch_first=True, atol=1e-5, rtol=1e-4
    )


def test_label_smoothing_needs_the_plain_loss() -> None:
    model = build_model(ModelConfig(name="attention", dim=8, max_len=6), N_ITEMS)
    items = tiny_batch()
    with pytest.raises(ValueError, match="only supported without per_sample"):
        next_item_loss(model, items, items, per_sample=True, label_smoothing=0.1)


@pytest.mark.parametrize("norm", ["sasrec", "pre", "post"])
def test_attention_is_causal(norm: str) -> None:
    config = ModelConfig(name="attention", dim=8, max_len=6, dropout=0.0, norm=norm)
    model = build_model(config, N_ITEMS)
    model.eval()
    items = tiny_batch()
    changed = items.clone()
    changed[:, -1] = (changed[:, -1] % N_ITEMS) + 1
    before, after = model(items), model(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_rotary_attention_predicts_each_prefix_as_its_own_window() -> None:
    """With rotary positions, position t of a sequence equals the last position of the
    window that ends at t: one causal pass trains every prefix as evaluation reads it."""
    torch.manual_seed(0)
    config = ModelConfig(name="attention", dim=8, heads=2, max_len=6, dropout=0.0)
    rotary = build_model(replace(config, positions="rotary"), N_ITEMS).eval()
    absolute = build_model(config, N_ITEMS).eval()
    sequence = torch.tensor([[0, 3, 1, 4, 1, 5]])
    for end in range(1, 6):
        window = torch.zeros_like(sequence)
        window[0, 5 - end :] = sequence[0, : end + 1]
        assert torch.allclose(rotary(sequence)[0, end], rotary(window)[0, -1], atol=1e-5)
        if end < 5:  # absolute positions change with where the prefix ends
            assert not torch.allclose(absolute(sequence)[0, end], absolute(window)[0, -1])
    assert "positions.weight" not in rotary.state_dict()
    assert check_per_sample_gradients_are_correct(
        tiny_batch(), ItemLogits(rotary.train()), batch_first=True, atol=1e-5, rtol=1e-4
    )


def test_lstm_item_skip_adds_the_current_items_embedding_and_no_parameter() -> None:
    torch.manual_seed(0)
    config = ModelConfig(name="lstm", dim=8, max_len=6, dropout=0.0)
    plain = build_model(config, N_ITEMS).eval()
    skip = build_model(replace(config, item_skip=True), N_ITEMS).eval()
    skip.load_state_dict(plain.state_dict())  # same parameters: the skip adds none
    items = tiny_batch()
    torch.testing.assert_close(skip(items), plain(items) + plain.items(items))
    assert check_per_sample_gradients_are_correct(
        items, ItemLogits(skip.train()), batch_first=True, atol=1e-5, rtol=1e-4
    )


def test_multiscale_fusion_weights_are_a_distribution() -> None:
    model = build_model(ModelConfig(name="multiscale", dim=8), N_ITEMS)
    weights = model.fusion_weights()
    assert set(weights) == {"short", "medium", "long"}
    assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trains_under_opacus_privacy_engine(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, dim=8, max_len=6, dropout=0.0), N_ITEMS)
    items = tiny_batch()
    targets = torch.roll(items, -1, dims=1) * (items > 0)
    targets[:, -1] = 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(items, targets), 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    before = model.items.weight.detach().clone()
    for batch_items, batch_targets in loader:
        optimizer.zero_grad()
        hidden = private(batch_items)
        logits = model.item_logits(hidden)
        mask = batch_targets > 0
        loss = nn.functional.cross_entropy(
            logits.transpose(1, 2), (batch_targets - 1).clamp(min=0), reduction="none"
        )
        ((loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean().backward()
        optimizer.step()
    assert not torch.equal(before, model.items.weight)
    assert engine.get_epsilon(delta=1e-5) > 0


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        ModelConfig(name="gru")
    with pytest.raises(ValueError, match="norm must be one of sasrec, pre, post, got 'mid'"):
        ModelConfig(norm="mid")
    with pytest.raises(ValueError, match="ffn_multiplier must be positive, got 0"):
        ModelConfig(ffn_multiplier=0)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="positions must be one of absolute, rotary, got 'x'"):
        ModelConfig(positions="x")
    with pytest.raises(ValueError, match="rotary positions need an even dim / heads, got 9 / 3"):
        ModelConfig(dim=9, heads=3, positions="rotary")


@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (5, 4)])
def test_tap_convolution_per_sample_gradients_equal_one_backward_per_sample(
    kernel: int, dilation: int
) -> None:
    torch.manual_seed(0)
    layer = TapConv1d(4, 3, kernel, dilation=dilation)
    inputs = torch.randn(5, 4, 7 + (kernel - 1) * dilation)
    backprops = torch.randn(5, 3, 7)
    ours = tap_conv_grad_sample(layer, [inputs], backprops)
    for sample in range(5):
        layer.zero_grad()
        (layer(inputs[sample : sample + 1]) * backprops[sample]).sum().backward()
        assert layer.bias is not None
        for param in (layer.weight, layer.bias):
            assert param.grad is not None
            torch.testing.assert_close(ours[param][sample], param.grad, rtol=1e-5, atol=1e-6)
