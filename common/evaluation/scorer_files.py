"""The on-device scorer's files in a run folder: ``scorer.json`` and ``statistics.npz``.

A run that releases DP statistics writes both beside its ``checkpoint.pt``:

- ``statistics.npz``: the release (:meth:`~common.privacy.statistics.DPStatistics.save`),
- ``scorer.json``: ``{"settings": {<ScorerSettings fields>}, "item-attributes": SOURCE,
  "dataset": DATASET}``, the global settings chosen on validation, the run's
  item-attribute source (``builtin`` or a path, :mod:`common.data.attributes`) and the
  run's data set (which ``builtin`` refers to).

The statistics are written first, so a ``scorer.json`` never names a missing release
unless a file was removed. A device rebuilds the same :class:`OnDeviceScorer` from these
files, its catalogue (the checkpoint's item ids) and the public item attributes, which it
may hold at another path (``attributes_override``). Every malformed, missing or
mismatched file is a ``ValueError`` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.attributes import check_attribute_source, load_item_attributes
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings, attribute_lists
from common.privacy.statistics import STATISTICS_FILE, DPStatistics
from common.storage.atomic import write_text_atomically

SCORER_FILE = "scorer.json"
SETTINGS_FIELD = "settings"
ATTRIBUTES_FIELD = "item-attributes"
DATASET_FIELD = "dataset"


def write_scorer_settings(
    run_dir: Path, settings: ScorerSettings, attributes_source: str, dataset: str
) -> None:
    """Write ``scorer.json`` atomically (the statistics are written by their releaser)."""
    if not str(attributes_source).strip():
        raise ValueError("the on-device scorer needs item attributes; the source is empty")
    payload = {
        SETTINGS_FIELD: dataclasses.asdict(settings),
        ATTRIBUTES_FIELD: str(attributes_source),
        DATASET_FIELD: str(dataset),
    }
    write_text_atomically(Path(run_dir) / SCORER_FILE, json.dumps(payload, indent=2) + "\n")


def scorer_file(location: Path) -> Path:
    """``scorer.json`` of a folder, or ``location`` itself when it names a .json file."""
    location = Path(location)
    return location if location.suffix == ".json" else location / SCORER_FILE


def load_scorer(
    location: Path, item_ids: Sequence[Any], attributes_override: str = ""
) -> OnDeviceScorer | None:
    """The scorer recorded in a run folder (or by its ``scorer.json``); None if there is none.

    ``item_ids`` is the catalogue (index ``i`` is ``item_ids[i - 1]``), e.g. a checkpoint's;
    ``attributes_override`` replaces the recorded item-attribute source.
    """
    path = scorer_file(location)
    if not path.is_file():
        return None
    settings, source, dataset = read_scorer_json(path)
    where = f"{path}: field {ATTRIBUTES_FIELD!r}: "  # the override's errors name its file
    if attributes_override.strip():
        source, where = attributes_override.strip(), ""
    stats = DPStatistics.load(path.with_name(STATISTICS_FILE))
    lists, n_attributes = catalogue_attributes(source, item_ids, dataset, where)
    check_statistics(path.with_name(STATISTICS_FILE), stats, len(item_ids), n_attributes)
    return OnDeviceScorer.from_release(stats, lists, settings)


def read_scorer_json(path: Path) -> tuple[ScorerSettings, str, str]:
    """Settings, item-attribute source and data set of a ``scorer.json``, validated."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    expected = (SETTINGS_FIELD, ATTRIBUTES_FIELD, DATASET_FIELD)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(expected)}")
    for name in expected:
        if name not in raw:
            raise ValueError(f"{path}: field {name!r} is missing")
    unknown = sorted(set(raw) - set(expected))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(map(repr, unknown))}")
    for name in (ATTRIBUTES_FIELD, DATASET_FIELD):
        if not isinstance(raw[name], str):
            raise ValueError(f"{path}: field {name!r} must be a string, got {raw[name]!r}")
    return scorer_settings(path, raw[SETTINGS_FIELD]), raw[ATTRIBUTES_FIELD], raw[DATASET_FIELD]


def scorer_settings(path: Path, raw: object) -> ScorerSettings:
    """:class:`ScorerSettings` from the ``settings`` object: every field, of the right type.

    A missing field is an error rather than a default: the device must score exactly as
    the evaluation that chose the settings did.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: field 'settings' must be an object, got {raw!r}")
    fields = {f.name: f.type for f in dataclasses.fields(ScorerSettings)}
    missing = [name for name in fields if name not in raw]
    unknown = sorted(set(raw) - set(fields))
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown {unknown}"
        raise ValueError(f"{path}: field 'settings': {problem} (expected {sorted(fields)})")
    for name, kind in fields.items():
        value = raw[name]
        wanted = int if kind in (int, "int") else float
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: field 'settings.{name}' must be a number, got {value!r}")
        if wanted is int and not isinstance(value, int):
            raise ValueError(f"{path}: field 'settings.{name}' must be an integer, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{path}: field 'settings.{name}' must be finite, got {value!r}")
    try:
        return ScorerSettings(**raw)
    except ValueError as error:
        raise ValueError(f"{path}: field 'settings': {error}") from None


def catalogue_attributes(
    source: str, item_ids: Sequence[Any], dataset: str, where: str
) -> tuple[list[np.ndarray], int]:
    """The public attributes of the catalogue as the scorer's lists; errors start ``where``."""
    if not source.strip():
        raise ValueError(f"{where}empty, but the scorer needs the public item attributes")
    try:
        check_attribute_source(source, dataset)
        attributes = load_item_attributes(source, item_ids, dataset)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None
    assert attributes is not None  # only an empty source gives None
    return attribute_lists(attributes)


def check_statistics(path: Path, stats: DPStatistics, n_items: int, n_attributes: int) -> None:
    """The release must fit the catalogue and the attributes, and hold finite numbers."""
    expected = {
        "popularity": (n_items + 1,),
        "attribute_transitions": (n_attributes, n_items + 1),
    }
    for name, shape in expected.items():
        values = getattr(stats, name)
        if values.shape != shape:
            raise ValueError(
                f"{path}: field {name!r} has shape {values.shape}, but the catalogue has "
                f"{n_items} items and the item attributes {n_attributes} attributes "
                f"(expected {shape}): the release belongs to another catalogue"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: field {name!r} holds non-finite values")
