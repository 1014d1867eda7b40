"""On-device recommendations from a checkpoint: exclusion, K, ordering, titles, bad input."""

from __future__ import annotations

import importlib
import json
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from client.recommend import main, recommend, titles_file
from common.data.item_text import ml100k_item_texts
from common.data.loaders import builtin_path
from common.data.partitioning import load_partition
from common.federation.checkpoints import (
    Checkpoint,
    dataset_item_ids,
    load_checkpoint,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.models import ModelConfig, build_model
from common.training.local import train_local
from tests.helpers import PROJECT_ROOT


@pytest.fixture
def trained_checkpoint(cycle_log: Path, tmp_path: Path) -> Path:
    """An LSTM trained on the cyclic log (item iK is followed by iK+1), saved stand-alone."""
    config = FederatedConfig(
        dataset=str(cycle_log), model="lstm", dim=8, max_len=6, dropout=0.0, lr=0.05,
        local_epochs=20, batch_size=16,
    )  # fmt: skip
    everyone = load_partition(config.dataset, 1, 0, config.seed)
    torch.manual_seed(0)
    model = build_model(config.model_config(), everyone.split.n_items)
    train_local(model, everyone.training_windows(config.max_len), config, seed=0)
    item_ids = dataset_item_ids(config.dataset)
    path = tmp_path / "best_checkpoint.pt"
    save_checkpoint(
        path, Checkpoint(2, model.state_dict(), config.model_config(), item_ids, config.dataset)
    )
    return path


def test_recommendations_exclude_history_honour_k_and_follow_the_scores(
    trained_checkpoint: Path,
) -> None:
    checkpoint = load_checkpoint(trained_checkpoint)
    history = ["i3", "i4", "i5"]

    ranked, skipped = recommend(checkpoint, history, 5, {})

    assert skipped == [] and [r.rank for r in ranked] == [1, 2, 3, 4, 5]
    assert not set(history) & {r.item for r in ranked}
    assert ranked[0].item == "i6"  # the model learnt the cycle
    model = checkpoint.build_model().eval()
    index = {item: i for i, item in enumerate(checkpoint.item_ids, start=1)}
    items = torch.tensor([[0, 0, 0] + [index[i] for i in history]])
    with torch.no_grad():
        scores = model.scores(items)[0]
    scores[[index[i] for i in history]] = float("-inf")
    expected = torch.sort(scores, descending=True, stable=True)
    assert [index[r.item] for r in ranked] == expected.indices[:5].tolist()
    np.testing.assert_allclose([r.score for r in ranked], expected.values[:5].numpy(), rtol=1e-6)


def test_k_larger_than_the_catalogue_lists_every_unseen_item(trained_checkpoint: Path) -> None:
    ranked, _ = recommend(load_checkpoint(trained_checkpoint), ["i3", "i4"], 100, {})
    assert len(ranked) == 28 and len({r.item for r in ranked}) == 28


def test_unknown_items_are_skipped_with_a_warning(
    trained_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--checkpoint", str(trained_checkpoint), "--items", "i3,new1,i4", "--json"])

    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert code == 0 and payload["skipped"] == ["new1"] and payload["round"] == 2
    assert len(payload["recommendations"]) == 10
    assert payload["recommendations"][0]["item"] == "i5"
    assert err.startswith("warning: skipped item(s) new1: not in the checkpoint's catalogue")


def test_only_unknown_items_is_one_line_and_exit_2(
    trained_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--checkpoint", str(trained_checkpoint), "--items", "x,y"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: none of the items x, y is in the checkpoint's catalogue of 30 items"]


@pytest.fixture
def ml100k_checkpoint(tmp_path: Path) -> Path:
    """An untrained small model over the real ML-100k catalogue (titles in u.item)."""
    config = ModelConfig(name="lstm", dim=8, layers=1, max_len=10)
    item_ids = dataset_item_ids("ml-100k")
    torch.manual_seed(0)
    model = build_model(config, len(item_ids))
    path = tmp_path / "ml100k.pt"
    save_checkpoint(path, Checkpoint(0, model.state_dict(), config, item_ids, "ml-100k"))
    return path


def test_ml100k_items_come_with_titles_and_no_network(
    ml100k_checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("recommend tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    code = main(["--checkpoint", str(ml100k_checkpoint), "--items", "50,172,133", "--k", "3"])

    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4  # header + 3
    texts = ml100k_item_texts(
        builtin_path("ml-100k").with_name("u.item"), builtin_path("ml-100k").with_name("u.genre")
    )
    for line in lines[1:]:
        rank, item, score, title = line.split(maxsplit=3)
        assert title == texts[int(item)] and int(item) not in (50, 172, 133)
    assert titles_file("ml-100k") == builtin_path("ml-100k").with_name("u.item")


def test_non_numeric_items_for_a_numeric_catalogue_is_one_line_and_exit_2(
    ml100k_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--checkpoint", str(ml100k_checkpoint), "--items", "50,star wars"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --items: 'star wars' is not a numeric item id"]


def test_a_missing_checkpoint_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--checkpoint", str(tmp_path / "none.pt"), "--items", "1"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {tmp_path / 'none.pt'}: checkpoint file not found"]


def test_the_console_script_points_at_this_command() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["fedseqrec-recommend"].partition(":")
    assert getattr(importlib.import_module(module), name) is main
