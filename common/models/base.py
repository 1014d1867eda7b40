"""The one interface every sequential recommender implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.attribute_embedding import AttributeItemEmbedding
from common.models.chunked_loss import chunked_cross_entropy
from common.models.item_embedding import ItemEmbedding

ItemTable = ItemEmbedding | AttributeItemEmbedding


class SequenceRecommender(nn.Module, ABC):
    """Maps a left-padded item batch (B, L) to hidden states (B, L, dim).

    ``hidden[:, t]`` predicts the item after ``items[:, t]``. Scores are dot products
    with the shared item table, so the output layer has no parameters of its own.
    ``gaps`` (log-bucketed time gaps, same shape as items) is optional; models that do
    not use time ignore it.
    """

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.items: ItemTable = ItemEmbedding(n_items, dim)  # build_model may swap it

    @property
    def n_items(self) -> int:
        """Catalogue size (excluding padding)."""
        return self.items.n_items

    @abstractmethod
    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        """Hidden states (B, L, dim) for a left-padded item batch (B, L)."""

    def item_logits(self, hidden: Tensor) -> Tensor:
        """Scores over real items only: column ``j`` is item ``j + 1``."""
        return self.items(hidden)

    def scores(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        """Scores (B, n_items + 1) for the next item after each row; padding is -inf."""
        hidden = self(items, gaps)[:, -1]
        logits = self.item_logits(hidden)
        padding = torch.full(
            (logits.shape[0], 1), float("-inf"), dtype=logits.dtype, device=logits.device
        )
        return torch.cat([padding, logits], dim=1)

    def fusion_weights(self) -> dict[str, float]:
        """Learned mixing weights of the model's branches, if it has any."""
        return {}


def next_item_loss(
    model: SequenceRecommender,
    items: Tensor,
    targets: Tensor,
    gaps: Tensor | None = None,
    per_sample: bool = False,
    label_smoothing: float = 0.0,
    per_window: bool = False,
) -> Tensor:
    """Cross-entropy over all items at every non-padding position.

    The default path scores only real positions (padding costs nothing) and never
    holds the full logits matrix (:mod:`common.models.chunked_loss`). With
    ``per_sample`` the scores keep the batch dimension, as Opacus's per-sample
    gradient hooks require, and the loss is the mean over positions of each sample,
    averaged over the batch. ``label_smoothing`` (plain training only) spreads that share
    of each target's probability mass uniformly over all items. ``per_window`` (plain
    training) weighs every window alike, as ``per_sample`` does: the mean over each
    window's positions, averaged over windows, instead of the mean over all positions,
    which weighs a window by its length.
    """
    if per_sample and label_smoothing:
        raise ValueError("label smoothing is only supported without per_sample")
    hidden = model(items, gaps)
    mask = targets > 0
    if not per_sample:
        weights = None
        if per_window:
            lengths = mask.sum(1)
            windows = int((lengths > 0).sum())
            weights = (1.0 / (lengths.clamp(min=1) * windows)).unsqueeze(1).expand_as(mask)[mask]
        return chunked_cross_entropy(
            hidden[mask], model.items.weight[1:], targets[mask] - 1,
            label_smoothing=label_smoothing, row_weights=weights,
        )  # fmt: skip
    return (row_cross_entropy(model, hidden, targets) / mask.sum(1).clamp(min=1)).mean()


def row_cross_entropy(model: SequenceRecommender, hidden: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over each row's real positions, from dense per-row scores.

    ``hidden`` may come from an Opacus ``GradSampleModule`` wrapping ``model``: the
    scores still go through ``model``'s hooked item table, so per-sample gradients
    cover both uses of it.
    """
    logits = model.item_logits(hidden)
    losses = F.cross_entropy(logits.transpose(1, 2), (targets - 1).clamp(min=0), reduction="none")
    return (losses * (targets > 0)).sum(1)
