"""Stacked LSTM over item embeddings: the classic GRU4Rec-like baseline."""

from __future__ import annotations

from opacus.layers import DPLSTM
from torch import Tensor, nn

from common.models.base import SequenceRecommender


class LSTMRecommender(SequenceRecommender):
    """Item embeddings -> DPLSTM (Opacus-compatible) -> projection to the item space."""

    def __init__(self, n_items: int, dim: int = 64, layers: int = 1, dropout: float = 0.2):
        super().__init__(n_items, dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = DPLSTM(dim, dim, num_layers=layers, batch_first=True)
        self.output = nn.Linear(dim, dim)

    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        embedded = self.dropout(self.items(items))
        hidden, _ = self.lstm(embedded)
        return self.output(self.dropout(hidden))
