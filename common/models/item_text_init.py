"""Transfer learning: initialise a model's item table from pretrained title embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from common.data.item_text import (
    MiniLMEncoder,
    TextEncoder,
    item_text_embeddings,
    ml100k_item_texts,
    project_embeddings,
)
from common.data.loaders import data_dir
from common.data.sequences import SequenceDataset
from common.models import ModelConfig, SequenceRecommender, build_model

CACHE_DIR_ENV = "FEDSEQREC_CACHE"


def cache_dir() -> Path:
    """Where computed item-text matrices are cached (override with $FEDSEQREC_CACHE)."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / ".cache"


def ml100k_text_matrix(dataset: SequenceDataset, encoder: TextEncoder | None = None) -> np.ndarray:
    """384-d MiniLM embeddings of ML-100k titles and genres, rows aligned with item ids."""
    folder = data_dir() / "ml-100k"
    texts = ml100k_item_texts(folder / "u.item", folder / "u.genre")
    cache = cache_dir() / "ml-100k-minilm.npy"
    cache.parent.mkdir(parents=True, exist_ok=True)
    return item_text_embeddings(texts, dataset.item_ids, encoder or MiniLMEncoder(), cache)


def text_initialised_model(
    config: ModelConfig,
    dataset: SequenceDataset,
    encoder: TextEncoder | None = None,
    seed: int = 0,
) -> SequenceRecommender:
    """Build a model whose item embeddings start from projected title embeddings."""
    if Path(dataset.name).name not in ("ml-100k", "u.data"):
        raise ValueError(
            f"text initialisation needs item titles; only ml-100k ships them, not {dataset.name}"
        )
    model = build_model(config, dataset.n_items)
    projected = project_embeddings(
        ml100k_text_matrix(dataset, encoder), config.dim, seed, target_std=config.dim**-0.5
    )
    model.items.initialise_from(torch.as_tensor(projected, dtype=torch.float32))
    return model
