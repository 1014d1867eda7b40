"""The item table shared by the input lookup and the output scores, with Opacus support.

Weight tying means one parameter is used twice per forward pass (lookup of input items,
dot product with every item for the scores). Opacus computes per-sample gradients per
module call, so both uses live in one module with a registered grad sampler that adds
up the two contributions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ItemEmbedding(nn.Module):
    """Row ``i`` embeds item ``i``; row 0 is padding and never trained or scored.

    Called with integer item ids it looks them up; called with float hidden states of
    width ``dim`` it returns scores over the real items 1..n_items (column ``j`` scores
    item ``j + 1``).
    """

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        if n_items < 1 or dim < 1:
            raise ValueError(f"n_items and dim must be positive, got {n_items}, {dim}")
        self.n_items = n_items
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(n_items + 1, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)
        with torch.no_grad():
            self.weight[0].zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.int64, torch.int32):
            # Padding looks up zeros whatever row 0 holds: DP noise (Opacus's DPOptimizer,
            # the server's user-level noise) lands on every coordinate, row 0 included.
            vectors = F.embedding(x, self.weight, padding_idx=0)
            return vectors.masked_fill((x == 0).unsqueeze(-1), 0.0)
        return F.linear(x, self.weight[1:])

    def initialise_from(self, matrix: Tensor) -> None:
        """Copy pretrained item vectors (rows aligned with item ids) into the table."""
        if tuple(matrix.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"pretrained item matrix has shape {tuple(matrix.shape)}, "
                f"expected {tuple(self.weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(matrix)
            self.weight[0].zero_()

    def table_maps(self) -> dict[str, tuple[Tensor, Tensor] | None]:
        """Each parameter's map from item rows to its own rows (None: the item rows)."""
        return {"weight": None}


def item_table_grad_sample(n_items: int, dim: int, x: Tensor, backprops: Tensor) -> Tensor:
    """Per-sample gradients ``(B, n_items + 1, dim)`` of an item table for one call:
    a lookup of integer ids ``x`` or scores of hidden states ``x`` (row 0 stays zero)."""
    batch = x.shape[0]
    grad = torch.zeros(batch, n_items + 1, dim, dtype=backprops.dtype, device=x.device)
    if x.dtype in (torch.int64, torch.int32):
        index = x.reshape(batch, -1, 1).expand(-1, -1, dim)
        grad.scatter_add_(1, index, backprops.reshape(batch, -1, dim))
        grad[:, 0] = 0.0
    else:
        hidden = x.reshape(batch, -1, dim)
        upstream = backprops.reshape(batch, -1, n_items)
        grad[:, 1:] = torch.bmm(upstream.transpose(1, 2), hidden)
    return grad


def item_embedding_grad_sample(
    layer: ItemEmbedding, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradient of the item table for one call (lookup or scoring)."""
    return {
        layer.weight: item_table_grad_sample(layer.n_items, layer.dim, activations[0], backprops)
    }
