"""Bit-mask dropout: PyTorch's dropout semantics, with a mask from random bits at p = 0.5."""

from __future__ import annotations

import pytest
import torch

from common.models.dropout import Dropout, half_mask


def test_half_dropout_keeps_about_half_and_doubles_them() -> None:
    torch.manual_seed(0)
    x = torch.full((400, 250), 3.0)
    y = Dropout(0.5).train()(x)
    kept = y > 0
    # 100,000 fair bits: the kept share is 0.5 within 5 standard deviations (0.0079)
    assert abs(float(kept.float().mean()) - 0.5) < 0.008
    assert set(y.unique().tolist()) == {0.0, 6.0}
    # neighbouring values (bits of one random byte) are independent: agreement ~ 1/2
    agree = (kept[:, 1:] == kept[:, :-1]).float().mean()
    assert abs(float(agree) - 0.5) < 0.008


def test_two_draws_differ_and_a_seed_repeats_them() -> None:
    torch.manual_seed(1)
    first, second = (
        half_mask(torch.Size([64, 8]), torch.device("cpu")),
        half_mask(torch.Size([64, 8]), torch.device("cpu")),
    )
    assert not torch.equal(first, second)
    torch.manual_seed(1)
    assert torch.equal(half_mask(torch.Size([64, 8]), torch.device("cpu")), first)


def test_the_gradient_passes_only_the_kept_values() -> None:
    torch.manual_seed(2)
    x = torch.randn(7, 13, requires_grad=True)  # 91 values: not a multiple of 8
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.where(y != 0, 2.0, 0.0))


def test_evaluation_zero_and_other_rates_behave_as_torch_dropout() -> None:
    x = torch.randn(50, 40)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(3)
    ours = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, torch.nn.Dropout(0.3).train()(x))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Dropout(1.0)
