"""The on-device scorer's run files: round trip, overrides, and each malformed file named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.data.attributes import load_item_attributes
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings, attribute_lists
from common.evaluation.scorer_files import (
    SCORER_FILE,
    STATISTICS_FILE,
    load_scorer,
)
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import DPStatistics, release_statistics
from tests.helpers import write_scorer_files

ITEM_IDS = ["i1", "i2", "i3", "i4", "i5"]
HISTORIES = [np.array(h) for h in ([1, 2, 3], [2, 3, 4], [1, 3, 5], [4, 5], [3, 4, 5])]
SETTINGS = ScorerSettings(window=2, decay=0.5, similarity_weight=1.5, model_weight=0.25)


def write_attributes(path: Path, extra: str = "") -> Path:
    """item,attribute CSV: i1 {a}, i2 {a, b}, i3 {b}, i4 {c}, i5 none."""
    path.write_text("item,attribute\ni1,a\ni2,a\ni2,b\ni3,b\ni4,c\n" + extra)
    return path


def release(attributes: Path) -> DPStatistics:
    """A real DP release (epsilon 8) over the tiny histories."""
    lists, n_attributes = attribute_lists(load_item_attributes(attributes, ITEM_IDS))
    noise = PrivacyRandomness(insecure_seed=[16])  # a test setting: reproducible release
    return release_statistics(HISTORIES, lists, n_attributes, 8.0, 1e-3, randomness=noise)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder holding scorer.json and statistics.npz over the tiny catalogue."""
    attributes = write_attributes(tmp_path / "attributes.csv")
    folder = tmp_path / "run"
    folder.mkdir()
    write_scorer_files(folder, release(attributes), SETTINGS, str(attributes), "tiny.csv")
    return folder


def edit_scorer_json(run_dir: Path, change: dict[str, object]) -> None:
    """Merge ``change`` into scorer.json (a None value removes the field)."""
    path = run_dir / SCORER_FILE
    raw = json.loads(path.read_text())
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


def test_attribute_lists_are_zero_based_with_empty_padding(tmp_path: Path) -> None:
    attributes = load_item_attributes(write_attributes(tmp_path / "a.csv"), ITEM_IDS)
    assert attributes is not None

    lists, n_attributes = attribute_lists(attributes)

    assert n_attributes == 3
    assert [a.tolist() for a in lists] == [[], [0], [0, 1], [1], [2], []]


def test_the_loaded_scorer_scores_exactly_as_the_released_one(run_dir: Path) -> None:
    stats = DPStatistics.load(run_dir / STATISTICS_FILE)
    lists, _ = attribute_lists(load_item_attributes(run_dir.parent / "attributes.csv", ITEM_IDS))
    direct = OnDeviceScorer.from_release(stats, lists, SETTINGS)

    loaded = load_scorer(run_dir, ITEM_IDS)

    assert loaded is not None and loaded.settings == SETTINGS
    model = np.linspace(0.0, 1.0, len(ITEM_IDS) + 1)
    for history in HISTORIES:
        np.testing.assert_array_equal(loaded.scores(history, model), direct.scores(history, model))
    assert json.loads((run_dir / SCORER_FILE).read_text())["dataset"] == "tiny.csv"


def test_a_folder_without_scorer_json_has_no_scorer(tmp_path: Path) -> None:
    assert load_scorer(tmp_path, ITEM_IDS) is None


def test_the_scorer_json_path_itself_is_accepted(run_dir: Path) -> None:
    scorer = load_scorer(run_dir / SCORER_FILE, ITEM_IDS)
    assert scorer is not None and scorer.n_items == len(ITEM_IDS)


def test_an_attribute_override_replaces_a_source_the_device_lacks(run_dir: Path) -> None:
    edit_scorer_json(run_dir, {"item-attributes": "/server/only/attributes.csv"})
    expected = load_scorer(run_dir, ITEM_IDS, str(run_dir.parent / "attributes.csv"))
    pattern = rf"{re.escape(str(run_dir / SCORER_FILE))}: field 'item-attributes': .*not found"

    with pytest.raises(ValueError, match=pattern):
        load_scorer(run_dir, ITEM_IDS)
    assert expected is not None and expected.settings == SETTINGS


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"dataset": None}, "field 'dataset' is missing"),
        ({"extra": 1}, "unknown field(s) 'extra'"),
        ({"item-attributes": 5}, "field 'item-attributes' must be a string, got 5"),
        ({"item-attributes": ""}, "field 'item-attributes': empty"),
        ({"item-attributes": "builtin"}, "field 'item-attributes': item-attributes 'builtin'"),
        ({"settings": [1]}, "field 'settings' must be an object"),
        ({"settings": {"window": 2}}, "field 'settings': missing ['decay'"),
        ({"settings": {**vars(SETTINGS), "speed": 1}}, "field 'settings': unknown ['speed']"),
        ({"settings": {**vars(SETTINGS), "window": "2"}}, "'settings.window' must be a number"),
        ({"settings": {**vars(SETTINGS), "window": 2.5}}, "'settings.window' must be an integer"),
        ({"settings": {**vars(SETTINGS), "decay": 0.0}}, "'settings': decay must be in (0, 1]"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_a_malformed_scorer_json_names_the_file_and_field(
    run_dir: Path, change: dict[str, object], problem: str
) -> None:
    edit_scorer_json(run_dir, change)

    with pytest.raises(ValueError) as caught:
        load_scorer(run_dir, ITEM_IDS)

    assert str(caught.value).startswith(f"{run_dir / SCORER_FILE}: ")
    assert problem in str(caught.value)


def test_scorer_json_that_is_not_json_names_the_line(run_dir: Path) -> None:
    (run_dir / SCORER_FILE).write_text('{"settings":\n')

    with pytest.raises(ValueError, match=rf"{re.escape(str(run_dir))}/scorer.json, line 2: inv"):
        load_scorer(run_dir, ITEM_IDS)


def test_a_missing_release_names_the_statistics_file(run_dir: Path) -> None:
    (run_dir / STATISTICS_FILE).unlink()

    with pytest.raises(ValueError, match=rf"{re.escape(str(run_dir / STATISTICS_FILE))}: not a"):
        load_scorer(run_dir, ITEM_IDS)


def test_a_release_for_another_catalogue_is_refused(run_dir: Path) -> None:
    with pytest.raises(ValueError) as caught:
        load_scorer(run_dir, [*ITEM_IDS, "i6"])

    message = str(caught.value)
    assert message.startswith(f"{run_dir / STATISTICS_FILE}: field 'popularity' has shape (6,)")
    assert "6 items" in message and "another catalogue" in message


def test_a_release_for_other_attributes_is_refused(run_dir: Path, tmp_path: Path) -> None:
    wider = write_attributes(tmp_path / "wider.csv", extra="i5,d\n")

    with pytest.raises(ValueError, match=r"field 'attribute_transitions' has shape \(3, 6\)"):
        load_scorer(run_dir, ITEM_IDS, str(wider))


def test_a_release_with_non_finite_values_is_refused(run_dir: Path) -> None:
    stats = DPStatistics.load(run_dir / STATISTICS_FILE)
    stats.popularity[2] = np.nan
    stats.save(run_dir / STATISTICS_FILE)

    with pytest.raises(ValueError, match=r"field 'popularity' holds non-finite values"):
        load_scorer(run_dir, ITEM_IDS)


def test_writing_without_attributes_is_refused(tmp_path: Path) -> None:
    stats = DPStatistics(np.zeros(2, np.float32), np.zeros((1, 2), np.float32), {})

    with pytest.raises(ValueError, match="needs item attributes"):
        write_scorer_files(tmp_path, stats, SETTINGS, " ", "tiny.csv")
    assert not (tmp_path / SCORER_FILE).exists() and not (tmp_path / STATISTICS_FILE).exists()
