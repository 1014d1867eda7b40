"""The global item catalogue: which original item id each row of the model's item table is.

The server's model scores ``n_items`` items; item index ``i`` (``1..n_items``) is the
original id ``item_ids[i - 1]`` and ``0`` is padding, exactly the numbering
:func:`common.data.sequences.build_sequences` gives the server's data set (sorted original
ids). An edge node holds only its own click log, so it needs this catalogue to turn its
item ids into the server's indices. The server sends it with every message (bytes in
the ConfigRecord, see :meth:`ItemCatalogue.to_config`): a node then always trains
against the catalogue of the model it received, a node joining late or restarted needs
nothing else, and the app package stays independent of the data set.

Ids are compared as text (``str`` of what the loaders read: ``42`` in ``u.data``
matches ``42`` in a CSV, ``042`` does not). Items a node has but the catalogue lacks
are unknown to the model and are dropped (:meth:`ItemCatalogue.encode` counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.data.ids import text_id_column
from common.data.loaders import ClickLog, dataset_log_format, load_dataset

CONFIG_KEY = "item-catalogue"
SEPARATOR = "\n"


@dataclass(frozen=True)
class EncodedLog:
    """A click log with items replaced by catalogue indices, unknown items removed."""

    log: ClickLog
    dropped_interactions: int
    unknown_items: int
    users_without_known_items: int


@dataclass(frozen=True)
class ItemCatalogue:
    """Original item ids in model-index order (index = position + 1; 0 = padding)."""

    item_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.item_ids:
            raise ValueError("an item catalogue needs at least one item")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError("item catalogue ids must be unique")
        bad = [item for item in self.item_ids if not item or SEPARATOR in item]
        if bad:
            raise ValueError(f"item catalogue id {bad[0]!r} is empty or contains a newline")

    @property
    def n_items(self) -> int:
        """Number of items the model scores (excluding padding)."""
        return len(self.item_ids)

    @classmethod
    def from_ids(cls, item_ids: Sequence[Any] | np.ndarray) -> ItemCatalogue:
        """A catalogue from ids already in model-index order."""
        return cls(tuple(str(item) for item in item_ids))

    @classmethod
    def from_dataset(cls, dataset: str, columns: str = "", time_unit: str = "") -> ItemCatalogue:
        """The catalogue of the model trained on ``dataset`` (name or path).

        Same numbering as :func:`common.data.sequences.build_sequences`: sorted unique ids.
        ``columns`` / ``time_unit`` as in :mod:`common.data.log_format`.
        """
        log = load_dataset(dataset, dataset_log_format(dataset, columns, time_unit))
        return cls.from_ids(np.unique(log.frame["item"].to_numpy()))

    @classmethod
    def from_file(cls, path: str | Path) -> ItemCatalogue:
        """A public item list: one id per line, line ``i`` is item index ``i``.

        What a deployment's server reads instead of users' data; a blank or duplicated
        id, or one the loaders would refuse (:mod:`common.data.ids`), is an error naming
        its line.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read the item catalogue ({error})") from None
        seen: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            item = line.strip()
            if not item:
                raise ValueError(f"{path}, line {number}: empty item id")
            if item in seen:
                raise ValueError(
                    f"{path}, line {number}: item id {item!r} repeats line {seen[item]}"
                )
            seen[item] = number
        if not seen:
            raise ValueError(f"{path}: the item catalogue is empty")
        text_id_column(pd.Series(list(seen)), path, "item", first_line=1)  # the loaders' rules
        return cls(tuple(seen))

    def write(self, path: str | Path) -> None:
        """Write the one-id-per-line file :meth:`from_file` reads."""
        Path(path).write_text("".join(f"{item}\n" for item in self.item_ids), encoding="utf-8")

    def to_config(self) -> dict[str, bytes]:
        """``{"item-catalogue": bytes}`` for a ConfigRecord (Flower logs bytes as <bytes>)."""
        return {CONFIG_KEY: SEPARATOR.join(self.item_ids).encode("utf-8")}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ItemCatalogue:
        """Read the catalogue the server put into a message's ConfigRecord."""
        payload = config.get(CONFIG_KEY)
        if not isinstance(payload, bytes):
            raise ValueError(
                f"the server message carries no item catalogue (ConfigRecord key {CONFIG_KEY!r})"
            )
        return cls(tuple(payload.decode("utf-8").split(SEPARATOR)))

    def indices(self, items: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Model indices (1..n_items) of original ids; 0 marks an unknown id."""
        position = {item: index for index, item in enumerate(self.item_ids, start=1)}
        return np.asarray([position.get(str(item), 0) for item in items], dtype=np.int64)

    def encode(self, log: ClickLog) -> EncodedLog:
        """Replace item ids by model indices and drop the items the model does not know."""
        frame = log.frame
        index = self.indices(frame["item"].to_numpy())
        known = index > 0
        kept = frame.loc[known].copy()
        kept["item"] = index[known]
        users_before = frame["user"].nunique()
        return EncodedLog(
            log=ClickLog(kept.reset_index(drop=True), source=log.source),
            dropped_interactions=int((~known).sum()),
            unknown_items=int(frame.loc[~known, "item"].nunique()),
            users_without_known_items=int(users_before - kept["user"].nunique()),
        )
