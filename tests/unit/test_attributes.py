"""Item attributes: built-in files of Beauty, Sports and Toys, ML-100k's from its public
u.item, JSON and CSV sources, mapping."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from common.data.attributes import check_attribute_source, load_item_attributes
from common.data.catalogue import ItemCatalogue
from common.data.loaders import builtin_path, load_dataset
from common.data.movielens import release_span
from common.data.node_data import NodeDataConfig
from common.data.sequences import build_sequences
from common.training.cli import build_parser, load_data, resolve_settings


@pytest.mark.parametrize(
    ("name", "counts", "n_attributes"),
    [
        ("sports", (35_598, 18_357, 296_337), 2_277),
        ("toys", (19_412, 11_924, 167_597), 1_027),
    ],
)
def test_new_builtin_data_sets_and_their_attributes(
    name: str, counts: tuple[int, int, int], n_attributes: int
) -> None:
    dataset = build_sequences(load_dataset(name))
    attributes = load_item_attributes("builtin", dataset.item_ids, name)

    assert (dataset.n_users, dataset.n_items, dataset.n_interactions) == counts
    assert attributes is not None
    assert (attributes.n_items, attributes.n_attributes) == (dataset.n_items, n_attributes)
    assert attributes.of(0).size == 0 and min(np.diff(attributes.offsets)[1:]) >= 1


def test_builtin_attributes_match_the_raw_json() -> None:
    dataset = build_sequences(load_dataset("beauty"))
    attributes = load_item_attributes("builtin", dataset.item_ids, str(builtin_path("beauty")))
    assert attributes is not None
    raw = json.loads(gzip.decompress(Path(attributes.source).read_bytes()))
    for index in (1, 500, dataset.n_items):
        item = str(dataset.item_ids[index - 1])
        names = [attributes.attribute_ids[a - 1] for a in attributes.of(index)]
        assert sorted(names) == sorted(str(a) for a in raw[item])


def test_ml100k_builtin_attributes_are_genres_and_release_spans_of_u_item() -> None:
    dataset = build_sequences(load_dataset("ml-100k"))
    attributes = load_item_attributes("builtin", dataset.item_ids, "ml-100k")

    assert attributes is not None and Path(attributes.source).name == "u.item"
    assert attributes.n_items == dataset.n_items == 1682
    names = set(attributes.attribute_ids)
    assert len([n for n in names if n.startswith("genre:")]) == 19
    assert {"released:1920-1924", "released:1995-1999"} <= names
    by_path = load_item_attributes("builtin", dataset.item_ids, str(builtin_path("ml-100k")))
    assert by_path is not None and by_path.attribute_ids == attributes.attribute_ids
    check_attribute_source("builtin", "/elsewhere/ml-100k/u.data")  # the launcher's path
    toy_story = list(dataset.item_ids).index(1) + 1  # item id 1 of u.item
    assert sorted(attributes.attribute_ids[a - 1] for a in attributes.of(toy_story)) == [
        "genre:Animation", "genre:Children's", "genre:Comedy", "released:1995-1999"]  # fmt: skip


def test_release_spans() -> None:
    assert [release_span(y) for y in (1919, 1920, 1924, 1925, 1997, 1998)] == [
        "released:1920-1924", "released:1920-1924", "released:1920-1924",
        "released:1925-1929", "released:1995-1999", "released:1995-1999"]  # fmt: skip


def test_csv_attributes_with_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.csv"
    path.write_text("item,attribute,source\nsku-2,brand:acme,x\nsku-10,cat-9,y\nsku-2,cat-10,z\n"
                    "sku-2,brand:acme,x\n")  # fmt: skip
    attributes = load_item_attributes(str(path), ["sku-10", "sku-2", "sku-3"], "shop")

    assert attributes is not None
    assert attributes.attribute_ids == ("brand:acme", "cat-9", "cat-10")
    assert [list(attributes.of(i)) for i in range(4)] == [[], [2], [1, 3], []]
    assert attributes.padded().tolist() == [[0, 0], [2, 0], [1, 3], [0, 0]]


def test_no_attributes_and_source_checks() -> None:
    assert load_item_attributes("", ["1"]) is None
    check_attribute_source("builtin", "toys")
    check_attribute_source("data/x.json.gz", "ml-100k")
    check_attribute_source("builtin", "ml-100k")
    with pytest.raises(ValueError, match="'shop.csv' has no built-in attribute file"):
        check_attribute_source("builtin", "shop.csv")
    with pytest.raises(ValueError, match=r"expected '', 'builtin' or a path to a \.json"):
        check_attribute_source("attrs.xml", "toys")


def test_attributes_from_train_cli_and_node_config(tmp_path: Path) -> None:
    log = tmp_path / "clicks.csv"
    log.write_text("user,item\n1,a\n1,b\n")
    attrs = tmp_path / "attrs.json"
    attrs.write_text('{"a": [7], "b": ["red", 7]}')

    settings = resolve_settings(
        build_parser().parse_args(["--dataset", str(log), "--item-attributes", str(attrs)])
    )
    _, from_cli = load_data(settings)
    node = NodeDataConfig.from_node_config({"data-path": str(log), "item-attributes": str(attrs)})
    from_node = node.load_attributes(ItemCatalogue.from_ids(["b", "a"]))

    assert from_cli is not None and from_node is not None
    assert from_cli.attribute_ids == from_node.attribute_ids == ("7", "red")
    assert [list(from_cli.of(i)) for i in (1, 2)] == [[1], [2, 1]]
    assert [list(from_node.of(i)) for i in (1, 2)] == [[2, 1], [1]]
