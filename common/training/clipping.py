"""Exact per-unit gradient clipping without materializing per-unit item-table gradients.

DP needs every unit's (a user's, or one training window's) gradient norm, then the sum
of the clipped gradients. Opacus gets norms from per-sample gradients, which for our
item table are ``(units, items, dim)`` tensors: for Beauty's 12k items that is most of
the work and memory of a DP step. Opacus's ghost clipping avoids that for plain layers
but refuses tied parameters, and our table is used twice (input lookup and output
scores). This module computes the same norms exactly from small matrices:

- output use: ``O_u = sum_p g_p h_p^T`` over the unit's scored positions ``p`` (``g`` =
  gradient of the loss w.r.t. the scores, ``h`` = hidden state), so
  ``|O_u|^2 = sum_{p,q} (g_p . g_q)(h_p . h_q)`` (a Gram matrix per unit). Units with
  more positions than the embedding width get ``O_u`` directly, which is then cheaper;
- input use: ``I_u = sum_q onehot(x_q) e_q^T`` (``e`` = gradient w.r.t. the looked-up
  vector); ``|I_u|^2`` and ``<O_u, I_u>`` need only position pairs of the same unit.

An item table composed from attribute vectors (and a residual) has one such gradient per
table, mapped from the item-row pieces (:mod:`common.training.table_maps`), and the unit's
norm sums them all. Every other parameter (attention, LSTM, convolutions) is small; its
per-sample gradients come from Opacus's ``GradSampleModule`` as usual. One forward and
one backward pass give both the norms and the clipped sum, so dropout masks are the same
for both.

With bfloat16 products the score gradients ``g`` are rounded to bfloat16 once, and that
rounded ``g`` is the gradient everywhere (back-propagation, norms, sums). The Gram matrix
``g_p . g_q`` then comes from a bfloat16 product (float32 accumulation, checked at import)
whose output rounding is bounded: the norm used for clipping is an upper bound of the
norm of what the unit adds, so no unit adds more than the clipping norm.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from common.models import SequenceRecommender
from common.models.chunked_loss import exp_scores, fast_bfloat16_available
from common.training.table_maps import TablePieces, mapped_pieces

if TYPE_CHECKING:
    from opacus import GradSampleModule

# The scores and the gradient sent back into the model may use bfloat16 products where
# the CPU has native units, as plain training does: they only define the gradient.
# Clipped sums are float32 products of exactly those values, and norms are exact or
# (bfloat16 Gram) bounded from above, so every unit's clipped contribution stays within
# the clipping norm.
DENSE_FRACTION = 0.75  # real positions above which scoring padding too is cheaper
SCORE_CHUNK = 128  # positions scored at a time, so each chunk of scores stays in cache
CLIP_MARGIN = 1e-4  # relative: float32 rounding must not let a unit exceed clip_norm
# Relative error allowed for a bfloat16 Gram entry: its output rounding is at most 2**-8
# of the exact (float32-accumulated) value; 2**-7 leaves a margin.
GRAM_ROUNDING = 2.0**-7


def bfloat16_products_accumulate_in_float32() -> bool:
    """Whether bfloat16 matrix products sum in float32 (as oneDNN does) rather than in
    bfloat16, whose sums stop growing at 256 ones. The Gram bound relies on it."""
    ones = torch.ones(1, 1, 1024, dtype=torch.bfloat16)
    return float((ones @ ones.transpose(1, 2)).item()) == 1024.0


PRODUCT_DTYPE = (
    torch.bfloat16
    if fast_bfloat16_available() and bfloat16_products_accumulate_in_float32()
    else torch.float32
)


@dataclass(frozen=True)
class ClippedSum:
    """Sum over units of ``factor_u * grad_u`` and what clipping did."""

    grads: dict[str, Tensor]
    norms: Tensor  # per unit, of ``scale * grad_u`` (before clipping)
    factors: Tensor  # per unit, :func:`clip_factors` (0 for a non-finite gradient)
    loss: float  # the summed (weighted) loss


@contextmanager
def _table_frozen(model: SequenceRecommender) -> Iterator[list[Tensor]]:
    """Freeze the item table(s) and capture the looked-up vectors as gradient leaves.

    With the tables frozen, Opacus hooks skip them (no per-sample table gradients); the
    captured lookups still receive their gradient ``e`` in the backward pass.
    """
    tables = list(model.items.parameters())
    lookups: list[Tensor] = []

    def capture(_module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if inputs[0].dtype not in (torch.int64, torch.int32):
            raise RuntimeError("tied clipping scores items itself; the model must not")
        leaf = output.detach().requires_grad_(True)
        lookups.append(leaf)
        return leaf

    for table in tables:
        table.requires_grad_(False)
    handle = model.items.register_forward_hook(capture)
    try:
        yield lookups
    finally:
        handle.remove()
        for table in tables:
            table.requires_grad_(True)


def _slots(units: Tensor, n_units: int) -> tuple[Tensor, Tensor]:
    """Each position's rank among its unit's positions, and every unit's position count."""
    order = torch.argsort(units, stable=True)
    counts = torch.bincount(units, minlength=n_units)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(units)
    slot[order] = torch.arange(len(units)) - starts[units[order]]
    return slot, counts


def _padded(values: Tensor, units: Tensor, slot: Tensor, compact: Tensor, width: int) -> Tensor:
    """The chosen units' positions as a zero-padded ``(chosen, width, ...)`` tensor.

    ``compact`` maps a unit to its row among the chosen units (-1: not chosen).
    """
    rows = compact[units]
    keep = rows >= 0
    out = values.new_zeros((int(compact.max()) + 1, width, *values.shape[1:]))
    if bool(keep.all()):
        out[rows, slot] = values
    else:
        out[rows[keep], slot[keep]] = values[keep]
    return out


def _unit_squares(gu: Tensor, hu: Tensor, eu: Tensor, xu: Tensor, is_long: bool) -> Tensor:
    """``|O_u + I_u|^2`` from per-unit padded scores gradients, hidden states, lookup
    gradients and looked-up items (padding: zero gradient, item 0).

    With bfloat16 ``gu`` the result is an upper bound (module doc), else exact.
    """
    same_item = (xu.unsqueeze(2) == xu.unsqueeze(1)) & (xu > 0).unsqueeze(2)
    input_sq = ((eu @ eu.transpose(1, 2)) * same_item).sum((1, 2))
    # <O_u, I_u> = sum_{p,q} g_p[x_q - 1] (h_p . e_q)
    picked = torch.gather(gu, 2, (xu - 1).clamp(min=0).unsqueeze(1).expand(-1, gu.shape[1], -1))
    picked = picked.float() * (xu > 0).unsqueeze(1)
    cross = (picked * (hu @ eu.transpose(1, 2))).sum((1, 2))
    if is_long:  # |O_u|^2 directly: cheaper than the Gram once positions exceed dim
        output_sq = (gu.float().transpose(1, 2) @ hu).pow(2).sum((1, 2))
    else:
        g_gram, h_gram = (gu @ gu.transpose(1, 2)).float(), hu @ hu.transpose(1, 2)
        output_sq = (g_gram * h_gram).sum((1, 2))
        if gu.dtype != torch.float32:  # each rounded entry is within GRAM_ROUNDING of exact
            output_sq = output_sq + GRAM_ROUNDING * (g_gram.abs() * h_gram.abs()).sum((1, 2))
    return output_sq + 2 * cross + input_sq


def _score_gradients(
    h: Tensor, table: Tensor, labels: Tensor, weights: Tensor, low: torch.dtype
) -> tuple[Tensor, Tensor, float]:
    """Gradient of the weighted cross-entropy w.r.t. the scores (in ``low``), the
    gradient sent back into ``h`` (from exactly those values), and the loss.

    Chunk by chunk, as plain training's loss does, so scores stay in cache.
    """
    low_h, low_table = h.to(low), table.to(low)
    g = torch.empty((len(h), len(table)), dtype=low)
    grad_h = torch.empty_like(h)
    loss = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(h), SCORE_CHUNK):
        rows = slice(start, start + SCORE_CHUNK)
        label, weight = labels[rows], weights[rows]
        probabilities, sums, log_normaliser, picked, _ = exp_scores(low_h[rows], low_table, label)
        loss += ((log_normaliser - picked) * weight).sum().double()
        probabilities *= weight.unsqueeze(1) / sums
        probabilities[torch.arange(len(label)), label] -= weight
        g[rows] = probabilities
        grad_h[rows] = (g[rows] @ low_table).float()
    return g, grad_h, float(loss)


def _output_sum(g: Tensor, weighted_h: Tensor) -> Tensor:
    """``g.T @ weighted_h`` in float32, converting ``g`` a cache-sized chunk at a time."""
    total = weighted_h.new_zeros((g.shape[1], weighted_h.shape[1]))
    for start in range(0, len(g), SCORE_CHUNK):
        rows = slice(start, start + SCORE_CHUNK)
        total.addmm_(g[rows].T.float(), weighted_h[rows])
    return total


def _table_norms(
    g: Tensor,
    h: Tensor,
    out_units: Tensor,
    e: Tensor,
    x: Tensor,
    in_units: Tensor,
    n_units: int,
    dim: int,
) -> Tensor:
    """Squared norms of each unit's item-table gradient ``O_u + I_u`` (see module doc)."""
    out_slot, out_counts = _slots(out_units, n_units)
    in_slot, in_counts = _slots(in_units, n_units)
    squares = torch.zeros(n_units, dtype=torch.float32)
    long_units = out_counts > dim
    for is_long in (False, True):
        chosen = torch.nonzero(long_units == is_long).squeeze(1)
        if len(chosen) == 0:
            continue
        compact = torch.full((n_units,), -1, dtype=torch.long)
        compact[chosen] = torch.arange(len(chosen))
        out_width, in_width = int(out_counts[chosen].max()), int(in_counts[chosen].max())
        gu = _padded(g, out_units, out_slot, compact, out_width)
        hu = _padded(h, out_units, out_slot, compact, out_width)
        eu = _padded(e, in_units, in_slot, compact, in_width)
        xu = _padded(x, in_units, in_slot, compact, in_width)
        squares[chosen] = _unit_squares(gu, hu, eu, xu, is_long)
    return squares


def clipped_gradient_sum(
    model: SequenceRecommender,
    items: Tensor,
    targets: Tensor,
    gaps: Tensor | None,
    row_units: Tensor,
    row_weights: Tensor,
    clip_norm: float,
    scale: float = 1.0,
    product_dtype: torch.dtype | None = None,
) -> ClippedSum:
    """Clip each unit's gradient of its weighted cross-entropy and sum the clipped ones.

    Row ``r`` belongs to unit ``row_units[r]`` (0..U-1) and its loss is the summed
    cross-entropy over its real positions times ``row_weights[r]``. A unit's gradient is
    the sum of its rows'; its norm is taken of ``scale * grad`` (``scale`` = learning
    rate when clipping updates rather than gradients). Returns unscaled clipped sums.
    ``product_dtype`` is the type of the score and back-propagated products (default:
    bfloat16 where the CPU has native units, else float32). A unit whose gradient is not
    finite contributes nothing (:func:`clip_factors`), so it cannot spoil the others.
    """
    pieces = _unit_gradients(
        model, items, targets, gaps, row_units, row_weights, product_dtype or PRODUCT_DTYPE
    )
    norms = scale * pieces.squares.clamp(min=0).sqrt()
    factors = clip_factors(norms, clip_norm)
    bad = factors == 0
    sums: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        if name in pieces.tables:
            sums[name] = _table_sum(param, pieces.tables[name], pieces.h, factors, bad)
        elif name in pieces.per_unit:
            grads = pieces.per_unit[name]
            kept = torch.where(bad.view(-1, *[1] * (grads.dim() - 1)), 0.0, grads)
            sums[name] = torch.einsum("u,u...->...", factors, kept)
        else:
            sums[name] = torch.zeros_like(param)
    return ClippedSum(sums, norms, factors, pieces.loss)


def clip_factors(norms: Tensor, clip_norm: float) -> Tensor:
    """Per-unit scale: min(1, clip / norm) with a float32 margin; 0 for non-finite norms.

    The margin (``CLIP_MARGIN``) absorbs float32 rounding in the norms and sums, so no
    unit adds more than ``clip_norm``; a NaN or infinite norm (a diverged user) zeroes
    that unit only: ``min(1.0, nan)`` would have been 1 and spoiled the whole sum.
    """
    factors = torch.clamp(clip_norm * (1.0 - CLIP_MARGIN) / norms.double(), max=1.0)
    return torch.where(torch.isfinite(norms), factors, 0.0).float()


@dataclass
class _UnitGradients:
    """The pieces of every unit's gradient (see module doc) and its squared norm."""

    tables: dict[str, TablePieces]  # item tables by parameter name
    h: Tensor  # hidden states of the scored positions
    per_unit: dict[str, Tensor]  # body parameters: per-unit gradients
    squares: Tensor
    loss: float


def _table_sum(
    param: Tensor, pieces: TablePieces, hidden: Tensor, factors: Tensor, bad: Tensor
) -> Tensor:
    """The clipped sum of an item table's gradient (output part plus input part)."""
    out_factors = factors[pieces.out_units].unsqueeze(1)
    in_factors = factors[pieces.in_units].unsqueeze(1)
    g = pieces.g  # (positions, items): copied only when a unit's gradient must be dropped
    if bool(bad.any()):
        g = g.masked_fill(bad[pieces.out_units].unsqueeze(1), 0)
    h = torch.where(out_factors > 0, hidden * out_factors, 0.0)
    e = torch.where(in_factors > 0, pieces.e * in_factors, 0.0)
    table_sum = torch.zeros_like(param)
    table_sum[1:] = _output_sum(g, h)
    table_sum.index_add_(0, pieces.x, e)
    table_sum[0] = 0.0
    return table_sum


def _unit_gradients(
    model: SequenceRecommender,
    items: Tensor,
    targets: Tensor,
    gaps: Tensor | None,
    row_units: Tensor,
    row_weights: Tensor,
    low: torch.dtype,
) -> _UnitGradients:
    """One forward and backward pass: every unit's gradient pieces and squared norm."""
    n_units = int(row_units.max()) + 1
    # one unit per row and few padding positions: score every position (padding weighs
    # 0) and keep the (row, position) grid, which is already per unit
    one_per_row = n_units == len(items) and torch.equal(row_units, torch.arange(len(items)))
    mask = targets > 0
    grid = one_per_row and float(mask.float().mean()) >= DENSE_FRACTION
    scored = torch.ones_like(mask) if grid else mask
    rows = torch.nonzero(scored)[:, 0]
    with _table_frozen(model) as lookups, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus: full backward hooks on integer inputs
        sampler = _grad_sample_module(model)
        try:
            hidden = sampler(items, gaps)
            h = hidden.reshape(-1, hidden.shape[-1]) if grid else hidden[mask]
            with torch.no_grad():
                g, grad_h, loss = _score_gradients(
                    h.detach(), model.items.weight[1:], (targets[scored] - 1).clamp(min=0),
                    row_weights[rows] * mask[scored], low,
                )  # fmt: skip
            torch.autograd.backward(h, grad_h)
            body = {  # parameters the forward pass did not use have no samples: zero
                name.removeprefix("_module."): param.grad_sample  # type: ignore[attr-defined]
                for name, param in sampler.named_parameters()
                if param.requires_grad and getattr(param, "grad_sample", None) is not None
            }
        finally:
            sampler._close()
            model.zero_grad(set_to_none=True)  # autograd's summed gradients are not used
    (lookup,) = lookups
    assert lookup.grad is not None
    in_mask = torch.ones_like(items, dtype=torch.bool) if grid else items > 0
    e, x, h = lookup.grad[in_mask], items[in_mask], h.detach()
    out_units, in_units = row_units[rows], row_units[torch.nonzero(in_mask)[:, 0]]
    tables = _mapped_tables(model, TablePieces(g, e, x, out_units, in_units))
    width = items.shape[1] if grid else 0
    squares = sum((_squares(t, h, n_units, width, model.items.dim) for t in tables.values()),
                  torch.zeros(n_units, dtype=torch.float32))  # fmt: skip
    per_unit = {
        name: grads if one_per_row else torch.zeros(
            (n_units, *grads.shape[1:]), dtype=grads.dtype
        ).index_add_(0, row_units, grads)
        for name, grads in body.items()
    }  # fmt: skip
    for grads in per_unit.values():
        squares = squares + grads.flatten(1).pow(2).sum(1)
    return _UnitGradients(tables, h, per_unit, squares, loss)


def _grad_sample_module(model: SequenceRecommender) -> GradSampleModule:
    """Opacus's ``GradSampleModule`` around ``model`` (per-sample gradients, summed loss).

    Opacus and our layers' samplers load here, on first use: a process that never clips
    does not pay their import (:mod:`common.models.grad_samplers`).
    """
    from opacus import GradSampleModule

    import common.models.grad_samplers  # noqa: F401

    return GradSampleModule(model, batch_first=True, loss_reduction="sum")


def _squares(t: TablePieces, h: Tensor, n_units: int, grid_width: int, dim: int) -> Tensor:
    """Squared norms of every unit's gradient of one table; ``grid_width`` > 0: the
    positions are the (unit, position) grid of that width, else gathered per unit."""
    if not grid_width:
        return _table_norms(t.g, h, t.out_units, t.e, t.x, t.in_units, n_units, dim)
    return _unit_squares(
        t.g.view(n_units, grid_width, -1), h.view(n_units, grid_width, -1),
        t.e.view(n_units, -1, dim), t.x.view(n_units, -1), grid_width > dim,
    )  # fmt: skip


def _mapped_tables(model: SequenceRecommender, items: TablePieces) -> dict[str, TablePieces]:
    """Every item-table parameter's gradient pieces, by parameter name."""
    tables: dict[str, TablePieces] = {}
    for name, table_map in model.items.table_maps().items():
        param = getattr(model.items, name)
        tables[f"items.{name}"] = (
            items if table_map is None else mapped_pieces(items, *table_map, len(param))
        )
    return tables
