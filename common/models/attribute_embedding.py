"""Item vectors composed from public attribute vectors (brand, categories), tied like
:class:`~common.models.item_embedding.ItemEmbedding`.

Item ``i``'s vector is the **mean** of the learned vectors of its public attributes, plus,
with ``residual``, a free per-item vector that starts at zero. The mean, not the sum: an
item's vector then has the same scale whatever its number of attributes, so dot-product
scores do not favour items with many categories, and under DP each attribute's share of
an item's gradient is bounded by 1. Items without attributes share one learned "no
attributes" vector. The composed table scores the outputs too (weight tying).

Without the residual, the trained (and, under DP, noised) coordinates are those of the
attribute table, ``(n_attributes + 2) x dim``, instead of ``(n_items + 1) x dim``.

Attribute table rows: 0 padding (never used), ``1..n_attributes`` the attributes
(:class:`~common.data.attributes.ItemAttributes` indices), ``n_attributes + 1`` "no
attributes". The item -> attribute map is public catalogue data. It is the module's
extra state (``state_dict`` key ``<prefix>_extra_state``, so a checkpoint carries it and a
device rebuilds the model from the checkpoint alone; federated updates hold parameters
only), not a buffer: Opacus refuses trainable layers with buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.item_embedding import item_table_grad_sample

EXTRA_STATE = "_extra_state"  # state_dict key (after the module's prefix) of the map


def attribute_map(padded: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the attribute table and mean weights per item, from a 0-padded index matrix.

    ``padded`` is ``(n_items + 1, k)`` of attribute indices 1..n (0 = none), as
    :meth:`ItemAttributes.padded` gives. An item with none gets the "no attributes" row
    ``n + 1`` with weight 1; padding item 0 gets weight 0 everywhere.
    """
    if isinstance(padded, Tensor):
        index = padded.detach().cpu().to(torch.long).clone()
    else:
        index = torch.from_numpy(np.array(padded, dtype=np.int64))  # a writable copy
    if index.ndim != 2 or len(index) < 2 or index.min() < 0:
        raise ValueError(
            f"attribute index matrix must be (n_items + 1, k) with entries >= 0, got "
            f"shape {tuple(index.shape)}"
        )
    n_attributes = int(index.max())
    counts = (index > 0).sum(1)
    bare = counts == 0
    bare[0] = False
    index[bare, 0] = n_attributes + 1
    index[0] = 0
    weights = (index > 0).float() / counts.clamp(min=1).unsqueeze(1).float()
    weights[bare, 0] = 1.0
    return index, weights


class AttributeItemEmbedding(nn.Module):
    """The item table as mean attribute vectors (+ a free residual), same calls as
    :class:`~common.models.item_embedding.ItemEmbedding`: integer ids look items up,
    float hidden states get scores over items 1..n_items."""

    def __init__(
        self, n_items: int, dim: int, padded: np.ndarray | Tensor, residual: bool = False
    ) -> None:
        super().__init__()
        if n_items < 1 or dim < 1:
            raise ValueError(f"n_items and dim must be positive, got {n_items}, {dim}")
        index, weights = attribute_map(padded)
        if len(index) != n_items + 1:
            raise ValueError(
                f"item attributes describe {len(index) - 1} items, the model has {n_items}"
            )
        self.n_items, self.dim = n_items, dim
        self.attribute_index, self.attribute_weights = index, weights  # CPU; see _map
        self._on_device = (index, weights)
        self.attributes = nn.Parameter(torch.empty(int(index.max()) + 1, dim))
        nn.init.normal_(self.attributes, std=dim**-0.5)
        with torch.no_grad():
            self.attributes[0].zero_()
        self.residual = nn.Parameter(torch.zeros(n_items + 1, dim)) if residual else None

    @property
    def weight(self) -> Tensor:
        """The composed item table ``(n_items + 1, dim)`` (row 0: padding, zero)."""
        return self._compose(torch.arange(self.n_items + 1, device=self.attributes.device))

    def _compose(self, items: Tensor) -> Tensor:
        """Vectors of a flat batch of item ids (mean attribute vector + residual)."""
        index, weights = self._map(items.device)
        vectors = F.embedding_bag(
            index[items], self.attributes, per_sample_weights=weights[items], mode="sum"
        )
        if self.residual is not None:
            vectors = vectors + F.embedding(items, self.residual)
        return vectors

    def _map(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The item -> attribute map on ``device`` (copied once per device change)."""
        if self._on_device[0].device != device:
            self._on_device = (self.attribute_index.to(device), self.attribute_weights.to(device))
        return self._on_device

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.int64, torch.int32):
            vectors = self._compose(x.reshape(-1).long()).view(*x.shape, self.dim)
            return vectors.masked_fill((x == 0).unsqueeze(-1), 0.0)
        return F.linear(x, self.weight[1:])

    def table_maps(self) -> dict[str, tuple[Tensor, Tensor] | None]:
        """Each parameter's map from item rows to its own rows (None: the item rows)."""
        maps: dict[str, tuple[Tensor, Tensor] | None] = {
            "attributes": (self.attribute_index, self.attribute_weights)
        }
        if self.residual is not None:
            maps["residual"] = None
        return maps

    def initialise_from(self, matrix: Tensor) -> None:
        """Pretrained item vectors cannot seed attribute vectors: refuse clearly."""
        raise ValueError("text initialisation needs item-embedding 'free'")

    def get_extra_state(self) -> Tensor:
        """The item -> attribute map, saved with the weights."""
        return self.attribute_index

    def set_extra_state(self, state: Any) -> None:
        """Refuse weights trained on another item -> attribute map (it is public data)."""
        ours = self.attribute_index
        if not (isinstance(state, Tensor) and state.shape == ours.shape
                and torch.equal(state.cpu(), ours)):  # fmt: skip
            shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(
                f"the weights were trained on other item attributes (attribute map "
                f"{shape} vs {tuple(ours.shape)}); use the same item-attributes file"
            )


def project_rows(grad: Tensor, index: Tensor, weights: Tensor, rows: int) -> Tensor:
    """``M^T grad`` along dim 1: item-row gradients ``(B, n_items + 1, d)`` -> table rows."""
    out = grad.new_zeros((grad.shape[0], rows, *grad.shape[2:]))
    for slot in range(index.shape[1]):
        out.index_add_(1, index[:, slot], grad * weights[:, slot].view(1, -1, 1))
    out[:, 0] = 0.0
    return out


def attribute_embedding_grad_sample(
    layer: AttributeItemEmbedding, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradients of one call: the item-row gradient, mapped onto each table."""
    items = item_table_grad_sample(layer.n_items, layer.dim, activations[0], backprops)
    grads = {
        layer.attributes: project_rows(
            items, layer.attribute_index, layer.attribute_weights, len(layer.attributes)
        )
    }
    if layer.residual is not None:
        grads[layer.residual] = items
    return grads
