"""The item catalogue: the server's numbering, its message encoding, unknown items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.catalogue import CONFIG_KEY, ItemCatalogue
from common.data.loaders import ClickLog, load_dataset
from common.data.sequences import build_sequences


def test_catalogue_numbers_items_like_the_server_sequences(cycle_log: Path) -> None:
    catalogue = ItemCatalogue.from_dataset(str(cycle_log))

    server = build_sequences(load_dataset(cycle_log))

    assert catalogue.n_items == server.n_items == 30
    assert catalogue.item_ids == tuple(str(item) for item in server.item_ids)
    first = server.sequences[0]
    originals = [server.item_ids[i - 1] for i in first]
    assert catalogue.indices(originals).tolist() == first.tolist()


def test_catalogue_travels_as_bytes_in_a_config_record() -> None:
    catalogue = ItemCatalogue.from_ids([3, 10, 200])

    config = catalogue.to_config()

    assert isinstance(config[CONFIG_KEY], bytes)
    assert ItemCatalogue.from_config(config) == catalogue
    with pytest.raises(ValueError, match="carries no item catalogue"):
        ItemCatalogue.from_config({"stage": "train"})


def test_unknown_items_are_dropped_and_counted() -> None:
    catalogue = ItemCatalogue.from_ids(["a", "b", "c"])
    frame = pd.DataFrame({"user": ["u1", "u1", "u2", "u2", "u3"],
                          "item": ["b", "zz", "zz", "yy", "c"]})  # fmt: skip

    encoded = catalogue.encode(ClickLog(frame, source="node.csv"))

    assert encoded.log.frame["item"].tolist() == [2, 3]
    assert encoded.log.frame["user"].tolist() == ["u1", "u3"]
    assert (encoded.dropped_interactions, encoded.unknown_items) == (3, 2)
    assert encoded.users_without_known_items == 1
    assert catalogue.indices(np.asarray(["c", "nope"])).tolist() == [3, 0]


def test_catalogue_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="unique"):
        ItemCatalogue.from_ids(["a", "a"])
    with pytest.raises(ValueError, match="at least one item"):
        ItemCatalogue(())
