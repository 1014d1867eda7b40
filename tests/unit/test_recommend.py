"""On-device recommendations from a checkpoint: exclusion, K, ordering, titles, bad input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from client.recommend import main, recommend, titles_file
from common.data.attributes import load_item_attributes
from common.data.item_text import ml100k_item_texts
from common.data.loaders import builtin_path
from common.data.partitioning import load_partition
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings, attribute_lists
from common.evaluation.scorer_files import SCORER_FILE, STATISTICS_FILE
from common.federation.checkpoints import (
    Checkpoint,
    dataset_item_ids,
    load_checkpoint,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.models import ModelConfig, build_model
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import DPStatistics, release_statistics
from common.training.local import train_local
from tests.helpers import PROJECT_ROOT, write_scorer_files


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
    assert code == 0 and len(lines) == 5  # scorer + header + 3
    assert lines[0] == "scorer: model alone"  # no scorer.json beside the checkpoint
    texts = ml100k_item_texts(
        builtin_path("ml-100k").with_name("u.item"), builtin_path("ml-100k").with_name("u.genre")
    )
    for line in lines[2:]:
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


HISTORY = ["i3", "i4", "i5"]


def write_cycle_attributes(path: Path) -> Path:
    """item,attribute CSV for the cyclic catalogue: item iK has attributes sK%5 and pK%2."""
    rows = [f"i{k},s{k % 5}" for k in range(30)] + [f"i{k},p{k % 2}" for k in range(30)]
    path.write_text("\n".join(["item,attribute", *rows]) + "\n")
    return path


def place_scorer(
    checkpoint_path: Path, attributes: Path, settings: ScorerSettings, recorded: str = ""
) -> OnDeviceScorer:
    """Release DP statistics of the cycle beside the checkpoint; the scorer a device must build."""
    checkpoint = load_checkpoint(checkpoint_path)
    lists, n_attributes = attribute_lists(load_item_attributes(attributes, checkpoint.item_ids))
    index = {item: i for i, item in enumerate(checkpoint.item_ids, start=1)}
    histories = [np.array([index[f"i{(s + t) % 30}"] for t in range(6)]) for s in range(30)]
    noise = PrivacyRandomness(insecure_seed=[16])  # a test setting: reproducible lists
    stats = release_statistics(histories, lists, n_attributes, 8.0, 1e-3, randomness=noise)
    source = recorded or str(attributes)
    write_scorer_files(checkpoint_path.parent, stats, settings, source, checkpoint.dataset)
    return OnDeviceScorer.from_release(stats, lists, settings)


def history_indices(checkpoint: Checkpoint) -> np.ndarray:
    index = {item: i for i, item in enumerate(checkpoint.item_ids, start=1)}
    return np.array([index[item] for item in HISTORY])


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = main([*args, "--items", ",".join(HISTORY), "--json"])
    assert code == 0
    payload: dict[str, object] = json.loads(capsys.readouterr().out)
    return payload


def listed(payload: dict[str, object]) -> list[str]:
    return [r["item"] for r in payload["recommendations"]]  # type: ignore[attr-defined]


def test_a_scorer_beside_the_checkpoint_ranks_as_the_on_device_top_k(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = place_scorer(
        trained_checkpoint, write_cycle_attributes(tmp_path / "attrs.csv"), ScorerSettings()
    )
    checkpoint = load_checkpoint(trained_checkpoint)
    history = history_indices(checkpoint)
    expected = scorer.top_k(history, 10)

    payload = run_json(["--checkpoint", str(trained_checkpoint)], capsys)

    assert listed(payload) == [checkpoint.item_ids[i - 1] for i in expected]
    assert not set(HISTORY) & set(listed(payload))
    scores = [r["score"] for r in payload["recommendations"]]  # type: ignore[attr-defined]
    np.testing.assert_allclose(scores, scorer.scores(history)[expected], rtol=1e-6)
    assert payload["scorer"] == {
        "kind": "on-device",
        "file": str(tmp_path / SCORER_FILE),
        "settings": dataclasses.asdict(ScorerSettings()),
    }


def test_no_scorer_gives_the_models_list(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = place_scorer(
        trained_checkpoint, write_cycle_attributes(tmp_path / "attrs.csv"), ScorerSettings()
    )
    checkpoint = load_checkpoint(trained_checkpoint)
    model_list, _ = recommend(checkpoint, HISTORY, 10, {})
    scorer_list = [
        checkpoint.item_ids[i - 1] for i in scorer.top_k(history_indices(checkpoint), 10)
    ]

    payload = run_json(["--checkpoint", str(trained_checkpoint), "--no-scorer"], capsys)

    assert listed(payload) == [r.item for r in model_list] != scorer_list
    assert payload["scorer"] == {"kind": "model"}


def test_a_model_weight_adds_the_models_scores_in_the_scorers_indexing(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ScorerSettings(model_weight=0.5)
    scorer = place_scorer(trained_checkpoint, write_cycle_attributes(tmp_path / "a.csv"), settings)
    checkpoint = load_checkpoint(trained_checkpoint)
    history = history_indices(checkpoint)
    with torch.no_grad():
        model = checkpoint.build_model().eval().scores(torch.tensor([[0, 0, 0, *history]]))[0]
    combined = scorer.scores(history, model.numpy())
    expected = np.lexsort((np.arange(len(combined)), -combined))[:10]

    code = main(["--checkpoint", str(trained_checkpoint), "--items", ",".join(HISTORY)])

    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        code == 0 and lines[0] == f"scorer: on-device ({tmp_path / SCORER_FILE}; model weight 0.5)"
    )
    assert [line.split()[1] for line in lines[2:]] == [checkpoint.item_ids[i - 1] for i in expected]
    assert not np.allclose(combined[1:], scorer.scores(history)[1:])  # the model did count


def test_item_attributes_override_the_recorded_source(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attributes = write_cycle_attributes(tmp_path / "attrs.csv")
    scorer = place_scorer(trained_checkpoint, attributes, ScorerSettings(), "/srv/attrs.csv")
    checkpoint = load_checkpoint(trained_checkpoint)

    code = main(["--checkpoint", str(trained_checkpoint), "--items", "i3"])
    err = capsys.readouterr().err.strip().splitlines()
    payload = run_json(
        ["--checkpoint", str(trained_checkpoint), "--item-attributes", str(attributes)], capsys
    )

    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / SCORER_FILE}: field 'item-attributes': ")
    assert "/srv/attrs.csv: item attribute file not found" in err[0]
    expected = scorer.top_k(history_indices(checkpoint), 10)
    assert listed(payload) == [checkpoint.item_ids[i - 1] for i in expected]


def test_the_scorer_flag_names_files_kept_elsewhere(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = place_scorer(
        trained_checkpoint, write_cycle_attributes(tmp_path / "attrs.csv"), ScorerSettings()
    )
    elsewhere = tmp_path / "device"
    elsewhere.mkdir()
    for name in (SCORER_FILE, STATISTICS_FILE):
        (tmp_path / name).rename(elsewhere / name)
    checkpoint = load_checkpoint(trained_checkpoint)

    payload = run_json(
        ["--checkpoint", str(trained_checkpoint), "--scorer", str(elsewhere / SCORER_FILE)], capsys
    )
    code = main(["--checkpoint", str(trained_checkpoint), "--items", "i3", "--scorer", "none"])

    expected = scorer.top_k(history_indices(checkpoint), 10)
    assert listed(payload) == [checkpoint.item_ids[i - 1] for i in expected]
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --scorer: none/scorer.json not found"
    ]


def test_a_release_for_another_catalogue_is_one_line_and_exit_2(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    place_scorer(
        trained_checkpoint, write_cycle_attributes(tmp_path / "attrs.csv"), ScorerSettings()
    )
    DPStatistics(np.ones(12, np.float32), np.ones((7, 12), np.float32), {
        "popularity": 1.0, "attribute_transitions": 1.0
    }).save(tmp_path / STATISTICS_FILE)  # fmt: skip

    code = main(["--checkpoint", str(trained_checkpoint), "--items", "i3"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(
        f"error: {tmp_path / STATISTICS_FILE}: field 'popularity' has shape (12,), but the "
        "catalogue has 30 items"
    )
