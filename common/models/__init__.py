"""Model zoo: every model maps a padded item batch to hidden states scored by a tied table."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from torch import Tensor

from common.config.field_types import check_field_types
from common.models.attention import NORM_PLACEMENTS, POSITIONS, AttentionRecommender
from common.models.attribute_embedding import AttributeItemEmbedding
from common.models.base import SequenceRecommender, next_item_loss
from common.models.lstm import LSTMRecommender
from common.models.multiscale import MultiScaleRecommender

MODEL_NAMES = ("lstm", "multiscale", "attention")
ITEM_EMBEDDINGS = ("free", "attributes", "attributes+residual")

__all__ = [
    "ITEM_EMBEDDINGS",
    "MODEL_KEYS",
    "MODEL_NAMES",
    "ModelConfig",
    "SequenceRecommender",
    "build_model",
    "next_item_loss",
]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters shared by the model zoo."""

    name: str = "attention"
    dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    n_gap_buckets: int = 0
    ffn_multiplier: int = 1  # attention: feed-forward width / dim
    norm: str = "sasrec"  # attention: layer-norm placement, one of NORM_PLACEMENTS
    positions: str = "absolute"  # attention: one of POSITIONS (rotary: relative to each query)
    item_skip: bool = False  # lstm: the output adds the current item's embedding
    item_embedding: str = "free"  # one of ITEM_EMBEDDINGS (common/models/attribute_embedding.py)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        if self.dim < 1 or self.layers < 1 or self.heads < 1 or self.max_len < 1:
            raise ValueError("dim, layers, heads and max_len must be positive")
        if self.ffn_multiplier < 1:
            raise ValueError(f"ffn_multiplier must be positive, got {self.ffn_multiplier}")
        if self.item_embedding not in ITEM_EMBEDDINGS:
            raise ValueError(
                f"item-embedding must be one of {', '.join(ITEM_EMBEDDINGS)}, "
                f"got {self.item_embedding!r}"
            )
        if self.norm not in NORM_PLACEMENTS:
            raise ValueError(f"norm must be one of {', '.join(NORM_PLACEMENTS)}, got {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ValueError(
                f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"
            )
        if self.name == "attention" and self.positions == "rotary" and (self.dim // self.heads) % 2:
            raise ValueError(
                f"rotary positions need an even dim / heads, got {self.dim} / {self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_gap_buckets < 0:
            raise ValueError(f"n_gap_buckets must be >= 0 (0 = off), got {self.n_gap_buckets}")
        if self.name == "attention" and self.dim % self.heads:
            raise ValueError(
                f"attention needs heads to divide dim: dim {self.dim} is not a multiple of "
                f"heads {self.heads}"
            )


MODEL_KEYS = tuple(field.name for field in fields(ModelConfig) if field.name != "name")
"""ModelConfig fields run configs and TOML files set by name (``name`` is ``model`` there)."""


def build_model(
    config: ModelConfig, n_items: int, attributes: np.ndarray | Tensor | None = None
) -> SequenceRecommender:
    """Instantiate the configured model for a catalogue of ``n_items`` items.

    ``attributes`` is the public item -> attribute index matrix
    (:meth:`common.data.attributes.ItemAttributes.padded`), required by (and only used
    with) an ``item_embedding`` other than ``free``.
    """
    model = _architecture(config, n_items)
    if config.item_embedding != "free":
        if attributes is None:
            raise ValueError(
                f"item-embedding {config.item_embedding!r} needs item attributes: set "
                "item-attributes ('builtin' for beauty, sports, toys, or a file)"
            )
        residual = config.item_embedding == "attributes+residual"
        model.items = AttributeItemEmbedding(n_items, config.dim, attributes, residual)
    return model


def _architecture(config: ModelConfig, n_items: int) -> SequenceRecommender:
    """The configured architecture with a free item table."""
    if config.name == "lstm":
        return LSTMRecommender(n_items, config.dim, config.layers, config.dropout, config.item_skip)
    if config.name == "multiscale":
        return MultiScaleRecommender(
            n_items, config.dim, config.dropout, n_gap_buckets=config.n_gap_buckets
        )
    return AttentionRecommender(
        n_items,
        config.dim,
        config.layers,
        config.heads,
        config.dropout,
        config.max_len,
        config.ffn_multiplier,
        config.norm,
        config.positions,
    )
