"""Causal self-attention over the item sequence (SASRec-like), the strongest baseline.

Attention is built from ``nn.Linear`` projections and the parameter-free
``scaled_dot_product_attention``, so Opacus computes exact per-sample gradients with
its Linear hooks while plain training keeps PyTorch's fused attention kernel.

Positions are either ``absolute`` (SASRec's learned embedding, counted back from the most
recent item) or ``rotary`` (RoPE: queries and keys rotated by their index, so attention
depends only on how far back a key lies from its query). With rotary positions a
position's output is the same whether it ends its window or not, so one causal pass
over a sequence trains every prefix exactly as evaluation reads it, which absolute
positions need one window per target for (``windows = "prefix"``). RoPE has no
parameters: Opacus needs nothing new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.base import SequenceRecommender
from common.models.dropout import Dropout

NORM_PLACEMENTS = ("sasrec", "pre", "post")
POSITIONS = ("absolute", "rotary")
ROTARY_BASE = 10_000.0


def rotary(x: Tensor) -> Tensor:
    """RoPE on (B, heads, L, head_dim): each pair of coordinates of position ``i`` turned by
    ``i`` times its own frequency, so a query-key product depends on their distance."""
    length, width = x.shape[-2], x.shape[-1]
    half = width // 2
    frequencies = ROTARY_BASE ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
    angles = torch.arange(length, device=x.device, dtype=x.dtype)[:, None] * frequencies
    cos, sin = angles.cos(), angles.sin()
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def causal_padding_mask(items: Tensor) -> Tensor:
    """Boolean (B, 1, L, L) mask: a position sees itself and earlier non-padding items.

    A padding query sees only itself, which keeps its softmax finite.
    """
    length = items.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
    real_keys = (items > 0)[:, None, None, :]
    itself = torch.eye(length, dtype=torch.bool, device=items.device)
    return causal & (real_keys | itself)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with Opacus-supported projections."""

    def __init__(self, dim: int, heads: int, dropout: float, rotate: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        if rotate and (dim // heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got {dim // heads}")
        self.heads = heads
        self.rotate = rotate
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, queries: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        batch, length, dim = queries.shape

        def split(x: Tensor) -> Tensor:
            return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        query, key = split(self.query(queries)), split(self.key(keys))
        if self.rotate:
            query, key = rotary(query), rotary(key)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            split(self.value(keys)),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return attended.transpose(1, 2).reshape(batch, length, dim)


class AttentionBlock(nn.Module):
    """Attention and a point-wise feed-forward, both residual, with layer norms placed by
    ``norm``.

    - ``sasrec`` (SASRec's own): queries are normed, the attention residual starts from
      them, the feed-forward is pre-norm.
    - ``pre``: both sub-layers pre-norm (``x + f(norm(x))``), the usual modern layout.
    - ``post``: both sub-layers post-norm (``norm(x + f(x))``), as in BERT.

    The feed-forward is ``ffn_multiplier * dim`` wide (SASRec: 1, Transformer: 4).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float,
        ffn_multiplier: int = 1,
        norm: str = "sasrec",
        rotate: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORM_PLACEMENTS:
            raise ValueError(f"norm must be one of {', '.join(NORM_PLACEMENTS)}, got {norm!r}")
        self.norm = norm
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads, dropout, rotate)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ffn_multiplier * dim),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(ffn_multiplier * dim, dim),
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.norm == "post":
            x = self.attention_norm(x + self.dropout(self.attention(x, x, mask)))
            return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        normed = self.attention_norm(x)
        if self.norm == "pre":
            x = x + self.dropout(self.attention(normed, normed, mask))
        else:
            x = normed + self.dropout(self.attention(normed, x, mask))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class AttentionRecommender(SequenceRecommender):
    """SASRec: item + position embeddings, causal attention blocks, final norm.

    With ``norm="post"`` the embeddings are normed instead of the output (BERT layout);
    with ``positions="rotary"`` there is no position embedding, attention rotates instead.
    """

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        max_len: int = 50,
        ffn_multiplier: int = 1,
        norm: str = "sasrec",
        positions: str = "absolute",
    ) -> None:
        super().__init__(n_items, dim)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.max_len = max_len
        rotate = positions == "rotary"
        self.positions: nn.Embedding | None = None if rotate else nn.Embedding(max_len, dim)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, heads, dropout, ffn_multiplier, norm, rotate) for _ in range(layers)
        )
        post = norm == "post"
        self.embedding_norm: nn.Module = nn.LayerNorm(dim) if post else nn.Identity()
        self.final_norm: nn.Module = nn.Identity() if post else nn.LayerNorm(dim)

    def forward(self, items: Tensor, gaps: Tensor | None = None) -> Tensor:
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        real = (items > 0).unsqueeze(-1)
        x = self.items(items) * self.items.dim**0.5
        if self.positions is not None:
            # Counted back from the most recent item, so trimming padding is exact.
            index = torch.arange(self.max_len - length, self.max_len, device=items.device)
            x = x + self.positions(index.expand_as(items))
        x = self.embedding_norm(x)
        x = self.dropout(x) * real
        mask = causal_padding_mask(items)
        for block in self.blocks:
            x = block(x, mask) * real
        return self.final_norm(x)
