"""The statistics path on edge nodes: config, the scorer in evaluation messages, node scoring."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from client.node_scoring import evaluation_scorer, public_attribute_lists
from common.data.attributes import load_item_attributes
from common.data.catalogue import ItemCatalogue
from common.data.partitioning import load_split
from common.evaluation.on_device import ScorerSettings, attribute_lists
from common.evaluation.scoring import evaluate_on_device
from common.federation.checkpoints import dataset_item_ids
from common.federation.config import FederatedConfig
from common.federation.messages import ARRAYS, CONFIG, METRICS, model_to_arrays
from common.federation.metrics import evaluation_sums, metrics_from_sums
from common.federation.run_model import run_model
from common.federation.scorer_messages import SCORER_ARRAYS, SCORER_CONFIG, ScorerRelease
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import STATISTICS_FILE, exact_statistics, noisy_release
from server.federated_evaluation import federated_metrics
from server.scorer_evaluation import ScorerEvaluation, released_scorer
from tests.helpers import write_cycle_attributes

DEPLOYED = {"deployment-nodes": 2, "catalogue": "/srv/items.txt", "population": 20,
            "partition-mode": "cohort", "dp": "user", "statistics": True,
            "target-epsilon": 8.0, "statistics-share": 0.5, "num-server-rounds": 2,
            "dataset": "/srv/no-user-data.csv"}  # fmt: skip
SETTINGS = ScorerSettings(similarity_weight=1.0, model_weight=0.5)


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's task identity, as Flower's ServerApp runtime sets it before a run."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def cycle(cycle_log: Path, tmp_path: Path) -> dict[str, Any]:
    """The cycle log's split, public attributes, a tiny model and an exact release."""
    attributes = write_cycle_attributes(cycle_log, tmp_path / "attributes.csv")
    config = FederatedConfig.from_run_config(
        {
            "dataset": str(cycle_log),
            "model": "lstm",
            "dim": 8,
            "layers": 1,
            "max-len": 10,
            "item-attributes": str(attributes),
        }  # fmt: skip
    )
    split = load_split(str(cycle_log))
    item_ids = list(dataset_item_ids(str(cycle_log)))
    loaded = load_item_attributes(str(attributes), item_ids)
    assert loaded is not None
    lists, n_attributes = attribute_lists(loaded)
    torch.manual_seed(0)
    model = run_model(config, split.n_items, item_ids)
    sums = exact_statistics(split.inputs("test"), lists, n_attributes)
    stats = noisy_release(*sums, {"popularity": 0.0, "attribute_transitions": 0.0},
                          PrivacyRandomness())  # fmt: skip
    return {"config": config, "split": split, "item_ids": item_ids, "lists": lists,
            "n_attributes": n_attributes, "model": model, "stats": stats,
            "attributes": attributes}  # fmt: skip


def test_a_deployment_may_release_statistics_from_a_public_attribute_file() -> None:
    config = FederatedConfig.from_run_config({**DEPLOYED, "item-attributes": "/srv/attr.csv"})
    assert config.statistics and config.deployment_nodes == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"item-attributes": "builtin"}, r"'/srv/no-user-data.csv' has no built-in attribute"),
        (
            {"item-attributes": "/a.csv", "dp": "local", "partition-mode": "cross-device"},
            r"needs dp = 'user' or 'none' and no secure-aggregation",
        ),
    ],  # fmt: skip
)
def test_a_deployment_still_refuses_what_the_statistics_cannot_do(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig.from_run_config({**DEPLOYED, **changes})


def test_the_release_survives_the_trip_in_an_evaluation_message(cycle: dict[str, Any]) -> None:
    release = ScorerRelease.of(cycle["stats"], SETTINGS)
    content = RecordDict({CONFIG: ConfigRecord({"stage": "valid"})})

    release.attach(content)
    received = ScorerRelease.received(content)

    assert received is not None and received.settings == SETTINGS
    np.testing.assert_array_equal(received.popularity, cycle["stats"].popularity)
    np.testing.assert_array_equal(
        received.attribute_transitions, cycle["stats"].attribute_transitions
    )
    assert ScorerRelease.received(RecordDict({CONFIG: ConfigRecord()})) is None


def test_a_half_or_malformed_release_in_a_message_is_named(cycle: dict[str, Any]) -> None:
    content = RecordDict()
    ScorerRelease.of(cycle["stats"], SETTINGS).attach(content)
    half = RecordDict({SCORER_ARRAYS: content.array_records[SCORER_ARRAYS]})
    bad = RecordDict({SCORER_ARRAYS: content.array_records[SCORER_ARRAYS],
                      SCORER_CONFIG: ConfigRecord({"window": 0})})  # fmt: skip

    with pytest.raises(ValueError, match="only together; one is missing"):
        ScorerRelease.received(half)
    with pytest.raises(ValueError, match=r"'scorer-settings': window must be an integer >= 1"):
        ScorerRelease.received(bad)
    with pytest.raises(ValueError, match=r"do not fit this node's item attributes \(2 attr"):
        ScorerRelease.of(cycle["stats"], SETTINGS).scorer(cycle["lists"], 2)


def test_node_sums_with_the_scorer_give_the_servers_on_device_figures(
    cycle: dict[str, Any],
) -> None:
    scorer = ScorerRelease.of(cycle["stats"], SETTINGS).scorer(
        cycle["lists"], cycle["n_attributes"]
    )
    model, split, config = cycle["model"], cycle["split"], cycle["config"]

    on_nodes = metrics_from_sums(evaluation_sums(model, split, "test", config, scorer))
    on_server = evaluate_on_device(scorer, model, split, "test", config.max_len)
    model_alone = metrics_from_sums(evaluation_sums(model, split, "test", config))

    assert on_nodes == pytest.approx(on_server)
    assert on_nodes != pytest.approx(model_alone)


def edge_node(folder: Path, cycle_log: Path, attributes: str = "") -> dict[str, str]:
    """An edge node's node config: its log (a copy of the cycle log) and attributes."""
    folder.mkdir()
    log = folder / "clicks.csv"
    log.write_text(cycle_log.read_text())
    return {"data-path": str(log), **({"item-attributes": attributes} if attributes else {})}


def test_an_edge_node_reads_its_own_attributes_else_the_run_configs_path(
    cycle: dict[str, Any], cycle_log: Path, tmp_path: Path
) -> None:
    catalogue = ConfigRecord(ItemCatalogue.from_ids(cycle["item_ids"]).to_config())
    own = tmp_path / "own.csv"  # the node's copy: every item but i0 has one attribute
    own.write_text("item,attribute\n" + "".join(f"i{k},a{k % 2}\n" for k in range(1, 30)))
    deployed = FederatedConfig.from_run_config(
        {**DEPLOYED, "item-attributes": str(cycle["attributes"])}
    )

    with_own = public_attribute_lists(
        deployed, edge_node(tmp_path / "n1", cycle_log, str(own)), catalogue
    )
    from_run = public_attribute_lists(deployed, edge_node(tmp_path / "n2", cycle_log), catalogue)

    assert with_own[1] == 2 and from_run[1] == cycle["n_attributes"]
    assert [list(a) for a in from_run[0]] == [list(a) for a in cycle["lists"]]
    without = FederatedConfig.from_run_config({**DEPLOYED, "statistics": False})
    with pytest.raises(ValueError, match="set item-attributes in the node config"):
        public_attribute_lists(without, edge_node(tmp_path / "n3", cycle_log), catalogue)


def test_an_evaluation_message_with_the_release_builds_the_nodes_scorer(
    cycle: dict[str, Any], cycle_log: Path, tmp_path: Path
) -> None:
    catalogue = ConfigRecord(ItemCatalogue.from_ids(cycle["item_ids"]).to_config())
    node = edge_node(tmp_path / "n1", cycle_log, str(cycle["attributes"]))
    content = RecordDict({CONFIG: catalogue})
    plain = evaluation_scorer(content, cycle["config"], node, catalogue)
    ScorerRelease.of(cycle["stats"], SETTINGS).attach(content)

    scorer = evaluation_scorer(content, cycle["config"], node, catalogue)

    assert plain is None
    assert scorer is not None and scorer.settings == SETTINGS
    assert scorer.n_items == len(cycle["item_ids"])


class TwoNodeGrid:
    """A grid of nodes 5 and 6 that answers every message with the same metric sums."""

    def __init__(self, sums: dict[str, float]) -> None:
        self.sums = sums
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [5, 6]

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        self.sent = list(messages)
        record = MetricRecord(self.sums)  # type: ignore[arg-type]
        return [Message(RecordDict({METRICS: record}), reply_to=m) for m in self.sent]


@pytest.mark.usefixtures("server_task")
def test_the_servers_evaluation_messages_carry_the_released_scorer(
    cycle: dict[str, Any], tmp_path: Path
) -> None:
    cycle["stats"].save(tmp_path / STATISTICS_FILE)
    deployed = FederatedConfig.from_run_config(
        {
            **DEPLOYED,
            "item-attributes": "/srv/a.csv",
            "scorer-model-weight": 0.5,
            "scorer-similarity-weight": 1.0,
        }  # fmt: skip
    )
    release = released_scorer(deployed, tmp_path)
    arrays = model_to_arrays(cycle["model"])
    config, split = cycle["config"], cycle["split"]
    grid = TwoNodeGrid(evaluation_sums(cycle["model"], split, "test", config))

    figures = federated_metrics(grid, arrays, {}, "test", release)  # type: ignore[arg-type]
    final = grid.sent
    wrapped = ScorerEvaluation(FedAvg(fraction_evaluate=1.0), release)
    per_round = list(wrapped.configure_evaluate(1, arrays, ConfigRecord(), grid))  # type: ignore[arg-type]

    assert release.settings == SETTINGS
    for message in [*final, *per_round]:
        received = ScorerRelease.received(message.content)
        assert received is not None and received.settings == SETTINGS
        np.testing.assert_array_equal(received.popularity, cycle["stats"].popularity)
        assert isinstance(message.content.array_records[ARRAYS], ArrayRecord)
    assert len(final) == len(per_round) == 2
    assert final[0].metadata.message_type == MessageType.EVALUATE
    assert 0.0 <= figures["hr@10"] <= 1.0
