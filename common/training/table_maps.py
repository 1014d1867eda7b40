"""Item-row gradient pieces mapped onto a table whose rows are not items (attributes).

Exact clipping (:mod:`common.training.clipping`) writes a unit's item-table gradient as
``O_u + I_u`` from score gradients ``g``, hidden states ``h``, lookup gradients ``e`` and
looked-up ids ``x``. A table ``A`` with item vectors ``W = M A`` (``M``: item -> row
weights, :mod:`common.models.attribute_embedding`) has gradient ``M^T (O_u + I_u)``,
which has the same form over ``A``'s rows: score gradients ``g M`` (one column per row),
and every lookup spread over the item's rows, ``e`` times the row's weight. So the same
norm and sum code serves every table, exactly. ``g M`` is a float32 product of the
(possibly bfloat16-rounded) ``g`` that back-propagation used, so its Gram norms are exact
rather than bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 128  # score-gradient rows converted at a time


@dataclass(frozen=True)
class TablePieces:
    """One table's gradient pieces: per scored position ``g`` (columns: rows 1..), per
    looked-up entry ``e`` and its row ``x`` (0: none), and the units they belong to."""

    g: Tensor
    e: Tensor
    x: Tensor
    out_units: Tensor
    in_units: Tensor


def mapped_pieces(items: TablePieces, index: Tensor, weights: Tensor, rows: int) -> TablePieces:
    """The pieces of the table ``A`` (``rows`` rows) behind ``W = M A`` from the item ones.

    ``index[i, k]`` / ``weights[i, k]``: item ``i``'s rows of ``A`` and their weights
    (weight 0 for padding slots); ``M[i, index[i, k]] = weights[i, k]``.
    """
    slots = index.shape[1]
    g = torch.zeros((len(items.g), rows), dtype=torch.float32)
    item_index, item_weights = index[1:], weights[1:]
    for start in range(0, len(items.g), CHUNK):
        chunk = items.g[start : start + CHUNK].float()
        for slot in range(slots):
            g[start : start + CHUNK].index_add_(
                1, item_index[:, slot], chunk * item_weights[:, slot]
            )
    e = (items.e.unsqueeze(1) * weights[items.x].unsqueeze(2)).reshape(-1, items.e.shape[-1])
    x = index[items.x].reshape(-1)
    in_units = items.in_units.repeat_interleave(slots)
    return TablePieces(g[:, 1:].contiguous(), e, x, items.out_units, in_units)
