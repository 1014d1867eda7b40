"""Public item attributes (brand, categories) mapped onto a data set's item indices.

Two file formats, both public catalogue data (no user data):

- JSON ``{"item id": [attribute, ...], ...}`` as in ``Beauty_item2attributes.json``
  (optionally gzip-compressed, ``.json.gz``); attributes are integers or strings.
- CSV / TSV with a header holding the columns ``item`` and ``attribute``, one row per
  (item, attribute) pair; ids may be strings. Repeated pairs count once.

The source is named like a data set: ``""`` (no attributes), ``builtin`` (the data set's
own file: Beauty, Sports and Toys ship one; ML-100k's are the genres and release-year
spans of its public ``u.item``, :mod:`common.data.movielens`) or a path. Train CLI
``--item-attributes``, run config ``item-attributes``, node config ``item-attributes``.
Ids follow the rules of :mod:`common.data.ids`; an item of the attribute file that the
data set lacks is an error (the catalogue must describe the data set's items), a data set
item without attributes is allowed and counted in the log. Attribute index ``a`` (1..n)
is ``attribute_ids[a - 1]`` in natural order; 0 is padding.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data import movielens
from common.data.errors import DataFormatError, read_text_table
from common.data.ids import MAX_ID_LENGTH, natural_key, text_id_column
from common.data.loaders import BUILTIN_FILES, builtin_path

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "builtin"
ATTRIBUTE_SUFFIX = "_item2attributes.json"
TABLE_SUFFIXES = (".csv", ".tsv")
BUILTIN_ATTRIBUTES = ("beauty", "sports", "toys", "ml-100k")
MOVIELENS_RATINGS, MOVIELENS_CATALOGUE = "u.data", "u.item"  # ml-100k: attributes from u.item


@dataclass(frozen=True)
class ItemAttributes:
    """Attribute indices per item index in CSR form (item 0 = padding has none)."""

    attribute_ids: tuple[str, ...]
    offsets: np.ndarray
    values: np.ndarray
    source: str

    @property
    def n_items(self) -> int:
        """Number of items described (the data set's items, padding excluded)."""
        return len(self.offsets) - 2

    @property
    def n_attributes(self) -> int:
        """Number of distinct attributes (padding excluded)."""
        return len(self.attribute_ids)

    def of(self, item: int) -> np.ndarray:
        """Attribute indices (1..n_attributes) of item index ``item``."""
        return self.values[self.offsets[item] : self.offsets[item + 1]]

    def padded(self) -> np.ndarray:
        """(n_items + 1, most attributes per item) matrix of attribute indices, 0-padded."""
        counts = np.diff(self.offsets)
        matrix = np.zeros((len(counts), max(int(counts.max()), 1)), dtype=np.int64)
        for item, count in enumerate(counts):
            matrix[item, :count] = self.of(item)
        return matrix


def builtin_attributes_path(dataset: str) -> Path:
    """The embedded attribute file of a data set given by built-in name or .txt path."""
    path = builtin_path(dataset) if dataset in BUILTIN_FILES else Path(dataset)
    if path.name == MOVIELENS_RATINGS:  # ML-100k's layout: the catalogue lies beside it
        return path.with_name(MOVIELENS_CATALOGUE)
    for candidate in (path.with_name(path.stem + ATTRIBUTE_SUFFIX + ".gz"),
                      path.with_name(path.stem + ATTRIBUTE_SUFFIX)):  # fmt: skip
        if candidate.is_file():
            return candidate
    raise DataFormatError(
        f"item-attributes 'builtin': data set {dataset!r} has no built-in attribute file "
        f"({', '.join(BUILTIN_ATTRIBUTES)} have one); give a path instead"
    )


def check_attribute_source(source: str, dataset: str) -> None:
    """Check an attribute source before any file is read (run config, CLI, node config)."""
    name = source.strip()
    if name == BUILTIN_SOURCE:
        is_path = dataset not in BUILTIN_FILES and (
            Path(dataset).suffix.lower() == ".txt" or Path(dataset).name == MOVIELENS_RATINGS
        )
        if dataset not in BUILTIN_ATTRIBUTES and not is_path:
            raise ValueError(
                f"item-attributes 'builtin': data set {dataset!r} has no built-in attribute "
                f"file ({', '.join(BUILTIN_ATTRIBUTES)} have one)"
            )
    elif name and not name.endswith((".json", ".json.gz", *TABLE_SUFFIXES)):
        raise ValueError(
            f"item-attributes {source!r}: expected '', 'builtin' or a path to a .json, "
            ".json.gz, .csv or .tsv file"
        )


def load_item_attributes(
    source: str | Path, item_ids: Sequence[Any] | np.ndarray, dataset: str = ""
) -> ItemAttributes | None:
    """Attributes of ``item_ids`` (index i = item_ids[i - 1]) from ``source``; None for ""."""
    name = str(source).strip()
    if not name:
        return None
    path = builtin_attributes_path(dataset) if name == BUILTIN_SOURCE else Path(name)
    if path.name == MOVIELENS_CATALOGUE:
        return _index(movielens.attribute_pairs(path), [str(i) for i in item_ids], path, dataset)
    if not path.is_file():
        raise DataFormatError(f"{path}: item attribute file not found")
    if path.name.endswith((".json", ".json.gz")):
        pairs = _json_pairs(path)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        pairs = _table_pairs(path)
    else:
        raise DataFormatError(
            f"{path}: item attributes must be .json, .json.gz, .csv or .tsv "
            f"(item,attribute), got {path.name}"
        )
    return _index(pairs, [str(item) for item in item_ids], path, dataset)


def _json_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(item, attribute, where) triples of a JSON attribute file, validated."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            raw = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason})") from None
    except (OSError, EOFError) as error:
        raise DataFormatError(f"{path}: unreadable ({error})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataFormatError(
            f"{path}: expected a non-empty JSON object {{item: [attribute, ...]}}, "
            f"got {type(raw).__name__}"
        )
    pairs: list[tuple[str, str, str]] = []
    for item, attributes in raw.items():
        where = f"item {_short(item)}"
        _check_id(item, path, where)
        if not isinstance(attributes, list):
            raise DataFormatError(
                f"{path}: {where}: attributes must be a list, got {type(attributes).__name__}"
            )
        for position, attribute in enumerate(attributes):
            field = f"{where}, attribute {position + 1}"
            if isinstance(attribute, bool) or not isinstance(attribute, int | str):
                raise DataFormatError(
                    f"{path}: {field} must be an integer or a string, got {attribute!r}"
                )
            _check_id(str(attribute), path, field)
            pairs.append((item, str(attribute), where))
    return pairs


def _short(value: str) -> str:
    return repr(value) if len(value) <= 80 else f"{value[:40]!r}... ({len(value):,} characters)"


def _check_id(value: str, path: Path, field: str) -> None:
    """The id rules of :mod:`common.data.ids` for one JSON key or value."""
    text = value.strip()
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise DataFormatError(
            f"{path}: {field}: an id must be 1 to {MAX_ID_LENGTH} printable characters, "
            f"got {_short(value)}"
        )
    if text.startswith("-") and text[1:].replace(".", "", 1).isdigit():
        raise DataFormatError(f"{path}: {field}: must not be a negative number, got {value!r}")


def _table_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(item, attribute, where) triples of an item,attribute CSV / TSV, validated."""
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    frame = read_text_table(path, separator, "file is empty (expected header item,attribute)")
    missing = [name for name in ("item", "attribute") if name not in frame.columns]
    if missing or frame.empty:
        found = ", ".join(map(str, frame.columns))
        problem = f"missing column(s) {', '.join(missing)}" if missing else "no rows"
        raise DataFormatError(f"{path}: {problem} (header must name item,attribute; found {found})")
    items = text_id_column(frame["item"], path, "item")
    attributes = text_id_column(frame["attribute"], path, "attribute")
    return [
        (item, attribute, f"line {row + 2}")
        for row, (item, attribute) in enumerate(zip(items, attributes, strict=True))
    ]


def _index(
    pairs: list[tuple[str, str, str]], item_ids: list[str], path: Path, dataset: str
) -> ItemAttributes:
    """Map (item, attribute) pairs onto item indices; unknown items are an error."""
    position = {item: index for index, item in enumerate(item_ids, start=1)}
    unknown = [(item, where) for item, _, where in pairs if item not in position]
    if unknown:
        item, where = unknown[0]
        count = len({item for item, _ in unknown})
        raise DataFormatError(
            f"{path}, {where}: item {_short(item)} is not in data set {dataset or '(given)'} "
            f"({count} unknown item(s) in all; the attribute file must describe the data "
            "set's items)"
        )
    attribute_ids = tuple(sorted({a for _, a, _ in pairs}, key=natural_key))
    attribute_index = {a: index for index, a in enumerate(attribute_ids, start=1)}
    per_item: list[list[int]] = [[] for _ in range(len(item_ids) + 1)]
    for item, attribute, _ in pairs:
        index = attribute_index[attribute]
        if index not in per_item[position[item]]:
            per_item[position[item]].append(index)
    counts = np.asarray([len(values) for values in per_item], dtype=np.int64)
    without = int((counts[1:] == 0).sum())
    if without:
        logger.warning("%s: %d of %d items have no attributes", path, without, len(item_ids))
    return ItemAttributes(
        attribute_ids=attribute_ids,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        values=np.asarray([a for values in per_item for a in values], dtype=np.int64),
        source=str(path),
    )
