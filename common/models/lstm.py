"""Stacked LSTM over item embeddings: the classic GRU4Rec-like baseline.

With ``item_skip`` the output adds the current item's own embedding to the projected
LSTM state, so scores hold a direct item-to-item term (``e_current . e_next``, what a
first-order Markov chain models) beside the recurrent summary; the attention and
multi-scale models have that path through their residual stream and short convolution.
It adds no parameter.
"""

from __future__ import annotations

from torch import Tensor, nn

from common.models.base import SequenceRecommender
from common.models.dropout import Dropout
from common.models.recurrent import SequenceLSTM


class LSTMRecommender(SequenceRecommender):
    """Item embeddings -> stacked LSTM (exact per-sample gradients) -> projection."""

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        layers: int = 1,
        dropout: float = 0.2,
        item_skip: bool = False,
    ) -> None:
        super().__init__(n_items, dim)
        self.dropout = Dropout(dropout)
        self.lstm = SequenceLSTM(dim, dim, num_layers=layers)
        self.output = nn.Linear(dim, dim)
        self.item_skip = item_skip

    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        embedded = self.items(items)
        hidden = self.output(self.dropout(self.lstm(self.dropout(embedded))))
        return hidden + embedded if self.item_skip else hidden
