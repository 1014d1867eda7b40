"""Multi-scale model: short, medium and long time scales fused by learned softmax weights.

- short: a causal Conv1d over the last few items (what the user is doing right now);
- medium: a dilated causal Conv1d covering a few dozen items (the current session/theme);
- long: an LSTM over the whole history (lasting taste).

The three branch outputs are mixed with weights ``softmax(alpha, beta, gamma)`` that are
learned and can be read out (:meth:`MultiScaleRecommender.fusion_weights`). Optional
inputs: log-bucketed time gaps, and the cosine similarity of consecutive items as an
interaction feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.data.features import consecutive_cosine
from common.models.base import SequenceRecommender
from common.models.dropout import Dropout
from common.models.recurrent import SequenceLSTM

SCALE_NAMES = ("short", "medium", "long")


class TapConv1d(nn.Conv1d):
    """A plain ``nn.Conv1d`` (stride 1, no padding, one group) whose per-sample gradients
    Opacus takes tap by tap (below) instead of through its generic unfold."""


def tap_conv_grad_sample(
    layer: TapConv1d, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per sample, ``grad W[:, :, j] = sum_t backprop_t x_{t + j * dilation}^T``: one
    batched product per kernel tap on shifted views, no unfolded copy of the input."""
    inputs = activations[0].to(backprops.dtype)  # (B, in, T + span - 1)
    length, dilation = backprops.shape[2], layer.dilation[0]
    taps = [
        torch.bmm(backprops, inputs[:, :, j * dilation : j * dilation + length].transpose(1, 2))
        for j in range(layer.kernel_size[0])
    ]
    grads: dict[Tensor, Tensor] = {layer.weight: torch.stack(taps, dim=-1)}
    if layer.bias is not None:
        grads[layer.bias] = backprops.sum(2)
    return grads


class CausalConv(nn.Module):
    """Conv1d over (B, L, dim) that only looks at the current and earlier positions."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_padding = (kernel_size - 1) * dilation
        self.conv = TapConv1d(dim, dim, kernel_size, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x.transpose(1, 2), (self.left_padding, 0))
        return self.conv(padded).transpose(1, 2)


class ScaleFusion(nn.Module):
    """Weighted sum of branch outputs (B, L, dim, scales) with softmax-normalised weights."""

    def __init__(self, scales: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(scales))

    def forward(self, branches: Tensor) -> Tensor:
        return (branches * torch.softmax(self.logits, dim=0)).sum(-1)


def scale_fusion_grad_sample(
    layer: ScaleFusion, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """d out / d logit_j = w_j (branch_j - out), summed per sample."""
    branches = activations[0]
    weights = torch.softmax(layer.logits.detach(), dim=0)
    fused = (branches * weights).sum(-1, keepdim=True)
    local = weights * (branches - fused)
    grad = (backprops.unsqueeze(-1) * local).reshape(branches.shape[0], -1, len(weights))
    return {layer.logits: grad.sum(1)}


class MultiScaleRecommender(SequenceRecommender):
    """Short/medium/long branches over the same embedded sequence, fused by learned weights."""

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        dropout: float = 0.2,
        short_kernel: int = 3,
        medium_kernel: int = 5,
        medium_dilation: int = 4,
        n_gap_buckets: int = 0,
        use_similarity: bool = True,
    ) -> None:
        super().__init__(n_items, dim)
        self.dropout = Dropout(dropout)
        self.gap_embedding = nn.Embedding(n_gap_buckets, dim) if n_gap_buckets else None
        self.similarity = nn.Linear(1, dim) if use_similarity else None
        self.short = CausalConv(dim, short_kernel, dilation=1)
        self.medium = CausalConv(dim, medium_kernel, dilation=medium_dilation)
        self.long = SequenceLSTM(dim, dim)
        self.fusion = ScaleFusion(len(SCALE_NAMES))
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        x = self.items(items)
        if self.similarity is not None:
            cosine = consecutive_cosine(items, self.items.weight.detach())
            x = x + self.similarity(cosine.unsqueeze(-1))
        if self.gap_embedding is not None and gaps is not None:
            x = x + self.gap_embedding(gaps)
        x = self.dropout(x) * (items > 0).unsqueeze(-1)
        long = self.long(x)
        branches = torch.stack([F.gelu(self.short(x)), F.gelu(self.medium(x)), long], dim=-1)
        return self.norm(self.dropout(self.fusion(branches)) + x)

    def fusion_weights(self) -> dict[str, float]:
        """The learned alpha (short), beta (medium), gamma (long) mixing weights."""
        weights = torch.softmax(self.fusion.logits.detach(), dim=0).tolist()
        return dict(zip(SCALE_NAMES, weights, strict=True))
