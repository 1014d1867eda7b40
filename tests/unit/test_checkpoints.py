"""Stand-alone checkpoints: contents, older formats, and the fit checks of continual runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from common.federation.checkpoints import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    check_compatible,
    dataset_item_ids,
    load_checkpoint,
    load_initial_checkpoint,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.models import ModelConfig, build_model

CONFIG = ModelConfig(name="lstm", dim=8, layers=1, max_len=6)


def checkpoint_for(cycle_log: Path, config: ModelConfig = CONFIG) -> Checkpoint:
    item_ids = dataset_item_ids(str(cycle_log))
    torch.manual_seed(0)
    model = build_model(config, len(item_ids))
    return Checkpoint(7, model.state_dict(), config, item_ids, str(cycle_log), {"ndcg@10": 0.25})


def test_catalogue_follows_the_model_index_order(cycle_log: Path) -> None:
    item_ids = dataset_item_ids(str(cycle_log))
    assert len(item_ids) == 30
    assert item_ids[:3] == ["i0", "i1", "i10"]  # string ids sort as strings
    assert dataset_item_ids("ml-100k")[:3] == [1, 2, 3]


def test_a_checkpoint_holds_what_a_device_needs(cycle_log: Path, tmp_path: Path) -> None:
    written = checkpoint_for(cycle_log)

    save_checkpoint(tmp_path / "c.pt", written)

    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["round"] == 7 and raw["n_items"] == 30
    assert raw["model_config"] == dataclasses.asdict(CONFIG)
    assert raw["item_ids"][:2] == ["i0", "i1"] and raw["dataset"] == str(cycle_log)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded.valid == {"ndcg@10": 0.25} and loaded.item_ids == written.item_ids
    for key, value in loaded.build_model().state_dict().items():
        torch.testing.assert_close(value, written.state_dict[key], rtol=0, atol=0)


def test_an_older_federated_checkpoint_is_rebuilt_from_its_run_config(
    cycle_log: Path, tmp_path: Path
) -> None:
    state = checkpoint_for(cycle_log).state_dict
    torch.save({"round": 3, "state_dict": state}, tmp_path / "best_checkpoint.pt")
    run_config = FederatedConfig(
        dataset=str(cycle_log), model="lstm", dim=8, layers=1, max_len=6
    ).to_run_config()
    (tmp_path / "config.json").write_text(json.dumps({"run_config": run_config}))

    loaded = load_checkpoint(tmp_path / "best_checkpoint.pt")

    assert loaded.round == 3 and loaded.model_config == CONFIG
    assert loaded.item_ids == dataset_item_ids(str(cycle_log))


def test_an_older_checkpoint_alone_is_a_clear_error(cycle_log: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"round": 3, "state_dict": checkpoint_for(cycle_log).state_dict}, path)

    with pytest.raises(CheckpointError, match="older checkpoint without model config and"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")


def test_weights_that_do_not_fit_the_stated_model_are_refused(
    cycle_log: Path, tmp_path: Path
) -> None:
    wrong = dataclasses.replace(checkpoint_for(cycle_log), model_config=ModelConfig("lstm", dim=4))
    save_checkpoint(tmp_path / "wrong.pt", wrong)

    with pytest.raises(CheckpointError, match="weights do not fit a lstm model of 30 items"):
        load_checkpoint(tmp_path / "wrong.pt")


def test_a_continued_run_must_match_model_and_catalogue(cycle_log: Path, tmp_path: Path) -> None:
    checkpoint = checkpoint_for(cycle_log)
    ids = list(checkpoint.item_ids)

    check_compatible(checkpoint, CONFIG, ids, "x")  # the same run: no error
    with pytest.raises(CheckpointError, match=r"x: model config differs: dim 8 \(checkpoint\)"):
        check_compatible(checkpoint, dataclasses.replace(CONFIG, dim=16), ids, "x")
    with pytest.raises(CheckpointError, match="x: catalogue size differs: 30 items in the"):
        check_compatible(checkpoint, CONFIG, [*ids, "new"], "x")
    with pytest.raises(CheckpointError, match="x: catalogue differs: item index 2 is 'i1'"):
        check_compatible(checkpoint, CONFIG, [ids[0], "other", *ids[2:]], "x")
    with pytest.raises(CheckpointError, match="initial-checkpoint c.pt: must be an absolute"):
        load_initial_checkpoint("c.pt", CONFIG, ids)
