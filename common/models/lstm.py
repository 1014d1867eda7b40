"""Stacked LSTM over item embeddings: the classic GRU4Rec-like baseline."""

from __future__ import annotations

from torch import Tensor, nn

from common.models.base import SequenceRecommender
from common.models.recurrent import SequenceLSTM


class LSTMRecommender(SequenceRecommender):
    """Item embeddings -> stacked LSTM (exact per-sample gradients) -> projection."""

    def __init__(self, n_items: int, dim: int = 64, layers: int = 1, dropout: float = 0.2):
        super().__init__(n_items, dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = SequenceLSTM(dim, dim, num_layers=layers)
        self.output = nn.Linear(dim, dim)

    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        embedded = self.dropout(self.items(items))
        hidden = self.lstm(embedded)
        return self.output(self.dropout(hidden))
