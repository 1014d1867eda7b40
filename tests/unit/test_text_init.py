"""Transfer learning: a model's item table starts from projected title embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.data.loaders import load_ml100k
from common.data.sequences import build_sequences
from common.models import ModelConfig
from common.models.item_text_init import text_initialised_model
from tests.helpers import FakeEncoder


def test_item_table_starts_from_text_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path))
    dataset = build_sequences(load_ml100k(), "ml-100k")
    encoder = FakeEncoder()
    config = ModelConfig(name="lstm", dim=8)
    first = text_initialised_model(config, dataset, encoder)
    second = text_initialised_model(config, dataset, encoder)
    assert encoder.calls == 1  # the second model reads the cache
    assert torch.equal(first.items.weight, second.items.weight)
    assert torch.count_nonzero(first.items.weight[0]) == 0
    assert first.items.weight.std().item() == pytest.approx(8**-0.5, rel=0.3)
    assert any(tmp_path.iterdir())


def test_other_datasets_are_refused() -> None:
    dataset = build_sequences(load_ml100k(), "beauty")
    with pytest.raises(ValueError, match="only ml-100k ships"):
        text_initialised_model(ModelConfig(dim=8), dataset, FakeEncoder())
