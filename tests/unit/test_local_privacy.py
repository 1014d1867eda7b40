"""A client's DP-SGD history: kept in context.state, and seeded from its ledger across runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.local_privacy import ClientPrivacy, load_history, plan_round, save_history
from common.data.features import training_windows
from common.data.partitioning import load_partition
from common.federation.config import FederatedConfig
from common.privacy.accounting import Release
from common.privacy.calibration import DeltaError
from common.privacy.ledger import PrivacyLedger


def fresh_context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_first_round_of_a_run_starts_from_the_nodes_earlier_releases(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    earlier = [Release(1.1, 0.25, 8), Release(1.1, 0.25, 8)]
    for round_, release in enumerate(earlier, start=1):
        ledger.record_release(
            "node-a", release, delta=1e-3, population=100, run_id="last-week", round=round_,
            unit="user", mechanism="dp-sgd", clip_norm=1.0,
        )  # fmt: skip
    ledger.record_release("node-b", Release(2.0, 0.5, 1), delta=1e-3, population=100,
                          run_id="last-week",
                          round=1, unit="user", mechanism="dp-sgd", clip_norm=1.0)  # fmt: skip
    context = fresh_context()

    history = load_history(context, ledger, "node-a")

    assert history == earlier  # only this node's releases, in order
    save_history(context, [*history, Release(0.9, 0.5, 4)])
    assert load_history(context, ledger, "node-a")[-1] == Release(0.9, 0.5, 4)  # state wins


def test_a_client_without_a_ledger_starts_with_no_history(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "missing" / "ledger.jsonl")
    assert load_history(fresh_context(), ledger, "client-0") == []


def private_config(cycle_log: Path, **changes: object) -> FederatedConfig:
    settings: dict[str, object] = {"dataset": str(cycle_log), "model": "lstm", "dim": 8,
        "max_len": 20, "dp": "local", "partition_mode": "cross-silo", "users_per_client": 10,
        "noise_multiplier": 1.0, "batch_size": 4, "results_dir": "/tmp/runs/run-a"}  # fmt: skip
    return FederatedConfig(**{**settings, **changes})  # type: ignore[arg-type]


def test_local_delta_follows_the_federation_not_the_node(cycle_log: Path) -> None:
    # Prepare: 10 users (10 windows) on this node, 943 in the federation
    config = private_config(cycle_log)
    windows = training_windows(load_partition(str(cycle_log), 2, 0, 42).split.train, 20)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    # Execute
    privacy = ClientPrivacy.from_context(config, context, 0, population=943)
    plan = plan_round(config, windows, privacy)
    # Assert
    assert len(windows) == 10
    assert plan.delta == pytest.approx(1 / 9430)  # not 1 / (10 x 10 windows)
    assert (privacy.population, privacy.run_id) == (943, "run-a")


def test_an_edge_node_may_set_the_population_itself(tmp_path: Path, cycle_log: Path) -> None:
    node_config = {"data-path": str(tmp_path / "clicks.csv"), "population": 943}
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                      run_config={})  # fmt: skip
    privacy = ClientPrivacy.from_context(private_config(cycle_log), context, 0)
    assert (privacy.who, privacy.population) == ("node-clicks", 943)


def test_without_a_population_local_dp_says_where_to_set_it(cycle_log: Path) -> None:
    with pytest.raises(ValueError, match="server sends 'population' in the train config"):
        ClientPrivacy.from_context(private_config(cycle_log), fresh_context(), 0)


def test_a_local_delta_above_the_population_rule_is_refused(cycle_log: Path) -> None:
    config = private_config(cycle_log, delta=1e-3)
    windows = training_windows(load_partition(str(cycle_log), 2, 0, 42).split.train, 20)
    privacy = ClientPrivacy.from_context(config, fresh_context(), 0, population=943)
    with pytest.raises(DeltaError, match=r"delta 1e-3 above 1 / \(10 x 943\)"):
        plan_round(config, windows, privacy)
