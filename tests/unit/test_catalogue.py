"""The item catalogue: the server's numbering, its message encoding, unknown items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.catalogue import CONFIG_KEY, ItemCatalogue
from common.data.loaders import ClickLog, load_dataset
from common.data.sequences import build_sequences
from common.federation.config import FederatedConfig


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


def test_a_public_item_list_round_trips_and_bad_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.txt"
    ItemCatalogue.from_ids(["b7", "a1", "42"]).write(path)
    assert ItemCatalogue.from_file(path).item_ids == ("b7", "a1", "42")  # file order is model order

    path.write_text("a1\n\nb2\n")
    with pytest.raises(ValueError, match=r"catalogue.txt, line 2: empty item id"):
        ItemCatalogue.from_file(path)
    path.write_text("a1\nb2\na1\n")
    with pytest.raises(ValueError, match=r"line 3: item id 'a1' repeats line 1"):
        ItemCatalogue.from_file(path)
    with pytest.raises(ValueError, match=r"missing.txt: cannot read the item catalogue"):
        ItemCatalogue.from_file(tmp_path / "missing.txt")


def test_a_deployment_needs_the_catalogue_and_population_not_user_data() -> None:
    with pytest.raises(ValueError, match="a deployment's server holds no user data"):
        FederatedConfig(deployment_nodes=2)
    config = FederatedConfig(deployment_nodes=2, catalogue="/srv/items.txt", population=900)
    assert config.population == 900
