"""The chunked cross-entropy equals the dense one, in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.models.chunked_loss import chunked_cross_entropy


def dense_and_chunked(
    low_precision: bool, label_smoothing: float = 0.0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = (0.3 * torch.randn(23, 8)).requires_grad_()
    targets = torch.randint(0, 23, (37,))
    dense = F.cross_entropy(hidden @ weight.T, targets, label_smoothing=label_smoothing)
    dense_grads = torch.autograd.grad(dense, [hidden, weight])
    chunked = chunked_cross_entropy(
        hidden,
        weight,
        targets,
        chunk_size=5,
        low_precision=low_precision,
        label_smoothing=label_smoothing,
    )
    chunked_grads = torch.autograd.grad(2.0 * chunked, [hidden, weight])
    return [dense, *dense_grads], [chunked, *(g / 2.0 for g in chunked_grads)]


def test_float32_matches_dense_exactly() -> None:
    dense, chunked = dense_and_chunked(low_precision=False)
    for expected, actual in zip(dense, chunked, strict=True):
        assert torch.allclose(expected, actual, atol=1e-6, rtol=1e-5)


def test_bfloat16_products_stay_close() -> None:
    dense, chunked = dense_and_chunked(low_precision=True)
    assert float(chunked[0]) == pytest.approx(float(dense[0]), rel=1e-2)
    for expected, actual in zip(dense[1:], chunked[1:], strict=True):
        assert torch.allclose(expected, actual, atol=2e-3, rtol=5e-2)


def test_label_smoothing_matches_torch_in_value_and_gradients() -> None:
    dense, chunked = dense_and_chunked(low_precision=False, label_smoothing=0.2)
    plain, _ = dense_and_chunked(low_precision=False)
    assert float(dense[0]) != pytest.approx(float(plain[0]), rel=1e-3)  # smoothing matters
    for expected, actual in zip(dense, chunked, strict=True):
        assert torch.allclose(expected, actual, atol=1e-6, rtol=1e-5)


def test_label_smoothing_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        chunked_cross_entropy(
            torch.zeros(2, 4),
            torch.zeros(3, 4),
            torch.zeros(2, dtype=torch.long),
            label_smoothing=1.0,
        )


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="no positions"):
        chunked_cross_entropy(
            torch.zeros(0, 4), torch.zeros(3, 4), torch.zeros(0, dtype=torch.long)
        )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_row_weights_give_the_weighted_sum_in_value_and_gradients(label_smoothing: float) -> None:
    torch.manual_seed(1)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = (0.3 * torch.randn(23, 8)).requires_grad_()
    targets = torch.randint(0, 23, (37,))
    shares = torch.rand(37)
    shares /= shares.sum()
    losses = F.cross_entropy(
        hidden @ weight.T, targets, reduction="none", label_smoothing=label_smoothing
    )
    dense = (losses * shares).sum()
    chunked = chunked_cross_entropy(
        hidden, weight, targets, chunk_size=5, low_precision=False,
        label_smoothing=label_smoothing, row_weights=shares,
    )  # fmt: skip
    assert float(chunked) == pytest.approx(float(dense), rel=1e-5)
    assert float(chunked) != pytest.approx(float(losses.mean()), rel=1e-3)  # weights matter
    for expected, actual in zip(
        torch.autograd.grad(dense, [hidden, weight]),
        torch.autograd.grad(chunked, [hidden, weight]),
        strict=True,
    ):
        assert torch.allclose(expected, actual, atol=1e-6, rtol=1e-5)
