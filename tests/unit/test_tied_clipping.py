"""Exact per-unit clipping for the tied item table equals per-unit autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.features import training_windows
from common.models import ModelConfig, SequenceRecommender, build_model
from common.models.base import row_cross_entropy
from common.training.clipping import (
    CLIP_MARGIN,
    _unit_squares,
    clip_factors,
    clipped_gradient_sum,
)
from tests.helpers import per_unit_gradients

N_ITEMS = 30


def batch(gap_buckets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray]:
    """Windows of 12 users, some longer than max-len (several rows per user)."""
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(1, N_ITEMS + 1, size=rng.integers(2, 25))) for _ in range(12)]
    sequences[3] = sequences[3][:4] * 3  # repeated items: the same table row several times
    times = [list(np.cumsum(rng.integers(1, 10**4, size=len(s)))) for s in sequences]
    windows = training_windows(sequences, 6, times if gap_buckets else None, gap_buckets)
    gaps = torch.as_tensor(windows.gaps) if windows.gaps is not None else None
    return torch.as_tensor(windows.inputs), torch.as_tensor(windows.targets), gaps, windows.owners


VARIANTS = {"lstm+skip": {"item_skip": True}, "attention+rotary": {"positions": "rotary"}}


def model_for(name: str, gap_buckets: int) -> SequenceRecommender:
    """A tiny model; ``lstm+skip`` and ``attention+rotary`` name options beside the model."""
    torch.manual_seed(0)
    config = ModelConfig(name=name.split("+")[0], dim=8, layers=1, dropout=0.0, max_len=6,
                         n_gap_buckets=gap_buckets, **VARIANTS.get(name, {}))  # fmt: skip
    return build_model(config, N_ITEMS)


@pytest.mark.parametrize(
    ("name", "gap_buckets"),
    [("attention", 0), ("attention+rotary", 0), ("lstm", 0), ("lstm+skip", 0), ("multiscale", 4)],
)
@pytest.mark.parametrize(("per_row", "dense_fraction"), [(False, 0.75), (True, 0.0), (True, 2.0)])
def test_clipped_sum_equals_per_unit_backward(
    name: str, gap_buckets: int, per_row: bool, dense_fraction: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # per row, dense_fraction 0 always scores the whole (row, position) grid, 2 never does
    monkeypatch.setattr("common.training.clipping.DENSE_FRACTION", dense_fraction)
    items, targets, gaps, owners = batch(gap_buckets)
    model = model_for(name, gap_buckets)
    if per_row:  # DP-SGD: every window its own unit, mean loss over its positions
        units = torch.arange(len(items))
        weights = 1.0 / (targets > 0).sum(1).float()
    else:  # user-level: a user's windows together, some users longer than dim positions
        units = torch.as_tensor(owners)
        assert int(torch.bincount(units[torch.nonzero(targets > 0)[:, 0]]).max()) > 8
        weights = torch.full((len(items),), 0.1)
    expected_norms, per_unit = per_unit_gradients(model, items, targets, gaps, units, weights, 0.5)
    clip = float(expected_norms.median())  # some units clipped, some not
    expected = {name: sum(min(1.0, clip * (1 - CLIP_MARGIN) / float(norm)) * grads[name]
                          for norm, grads in zip(expected_norms, per_unit, strict=True))
                for name in per_unit[0]}  # fmt: skip
    result = clipped_gradient_sum(model, items, targets, gaps, units, weights, clip, scale=0.5,
                                  product_dtype=torch.float32)  # fmt: skip
    torch.testing.assert_close(result.norms, expected_norms, rtol=1e-4, atol=1e-6)
    for param_name, value in expected.items():
        torch.testing.assert_close(result.grads[param_name], value, rtol=1e-4, atol=1e-6)
    loss = sum(float((row_cross_entropy(model, model(items[units == u]), targets[units == u])
                      * weights[units == u]).sum()) for u in range(int(units.max()) + 1)
               ) if gaps is None else None  # fmt: skip
    if loss is not None:
        assert result.loss == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("name", ["attention", "lstm", "multiscale"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_norm_is_the_norm_of_what_is_summed(name: str, dtype: torch.dtype) -> None:
    """With bfloat16 scores the gradient is approximate, but the clipping stays exact:
    a unit's reported norm is the norm of the contribution it adds to the sum (float32),
    or a bound at most 1% above it (bfloat16 Gram products), never below."""
    items, targets, gaps, owners = batch(4 if name == "multiscale" else 0)
    model = model_for(name, 4 if name == "multiscale" else 0)
    for rows in (owners == 3, np.arange(len(items)) == 0, np.ones(len(items), dtype=bool)):
        rows_t = torch.as_tensor(rows)
        unit_gaps = gaps[rows_t] if gaps is not None else None
        result = clipped_gradient_sum(
            model, items[rows_t], targets[rows_t], unit_gaps,
            torch.zeros(int(rows.sum()), dtype=torch.long), torch.ones(int(rows.sum())),
            clip_norm=1e9, scale=0.5, product_dtype=dtype,
        )  # fmt: skip
        summed = torch.sqrt(sum(g.double().pow(2).sum() for g in result.grads.values()))
        norm, added = float(result.norms[0]), 0.5 * float(summed)
        if dtype == torch.float32:
            assert norm == pytest.approx(added, rel=1e-5)
        else:
            assert added * (1 - 1e-6) <= norm <= added * 1.01
        exact = per_unit_gradients(model, items[rows_t], targets[rows_t], unit_gaps,
                          torch.zeros(int(rows.sum()), dtype=torch.long),
                          torch.ones(int(rows.sum())), 0.5)[0]  # fmt: skip
        assert float(result.norms[0]) == pytest.approx(float(exact[0]), rel=2e-2)


def test_the_model_is_left_as_it_was() -> None:
    items, targets, gaps, owners = batch(0)
    model = model_for("attention", 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clipped_gradient_sum(model, items, targets, gaps, torch.as_tensor(owners),
                         torch.ones(len(items)), 1.0)  # fmt: skip
    assert model.items.weight.requires_grad
    assert not model.items._forward_hooks
    assert all(p.grad is None for p in model.parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])
        assert not hasattr(param, "grad_sample") or param.grad_sample is None
    # an ordinary training step still works afterwards
    loss = row_cross_entropy(model, model(items), targets).sum()
    loss.backward()
    assert model.items.weight.grad is not None


def test_bfloat16_gram_bound_holds_on_large_catalogues() -> None:
    """The rounded Gram plus its margin bounds the exact one from above, with Beauty-sized
    rows, peaked and flat score gradients, and hidden states of both signs. (Were the
    bfloat16 products summed in bfloat16, 12,101-long sums would break the bound.)"""
    torch.manual_seed(0)
    units, width, n_items, dim = 6, 20, 12_101, 16
    logits = torch.randn(units, width, n_items) * torch.linspace(0.1, 8.0, units)[:, None, None]
    g = torch.softmax(logits, dim=-1)
    g[..., 0] -= 1.0  # the target's entry, as in a cross-entropy gradient
    g = g.to(torch.bfloat16)
    h = torch.randn(units, width, dim)
    e, x = torch.zeros(units, 3, dim), torch.zeros(units, 3, dtype=torch.long)
    bound = _unit_squares(g, h, e, x, is_long=False)
    exact = (g.double().transpose(1, 2) @ h.double()).pow(2).sum((1, 2))
    assert bool((bound.double() >= exact * (1 - 1e-6)).all())
    # the same target at every position is the worst case for the margin: all g_p . g_q
    # near 1, so it counts |h_p . h_q| where the exact sum cancels; still within 3% on norms
    assert bool((bound.double().sqrt() <= exact.sqrt() * 1.03).all())


def test_no_unit_adds_more_than_the_clip_norm_and_non_finite_ones_add_nothing() -> None:
    norms = torch.tensor([0.5, 1.0, 1.0 + 1e-7, 3e7, float("nan"), float("inf")])
    factors = clip_factors(norms, clip_norm=1.0)
    assert factors[0] == 1.0 and factors[4] == 0.0 and factors[5] == 0.0
    assert bool(((factors * norms)[:4] <= 1.0).all())  # in float32, with its rounding


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_one_users_non_finite_gradient_removes_that_user_only(bad: float) -> None:
    items, targets, gaps, owners = batch(0)
    model = model_for("attention", 0)
    units = torch.as_tensor(owners)
    weights = torch.full((len(items),), 0.1)
    poisoned, removed = weights.clone(), weights.clone()
    poisoned[units == 2], removed[units == 2] = bad, 0.0

    result = clipped_gradient_sum(model, items, targets, gaps, units, poisoned, 0.05)
    expected = clipped_gradient_sum(model, items, targets, gaps, units, removed, 0.05)

    assert float(result.factors[2]) == 0.0 and bool(
        (result.factors[torch.arange(len(result.factors)) != 2] > 0).all()
    )
    for name, value in expected.grads.items():
        assert bool(torch.isfinite(result.grads[name]).all())
        torch.testing.assert_close(result.grads[name], value)
