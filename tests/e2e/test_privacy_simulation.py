"""End to end: DP runs account every release in the ledger and stop at their budgets.

Both runs compose their item tables from public item attributes (user-level DP:
``attributes``; local DP with Opacus: ``attributes+residual``), and a device rebuilds the
released model from the checkpoint alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.recommend import recommend
from common.data.features import training_windows
from common.data.partitioning import load_partition
from common.federation.checkpoints import load_checkpoint
from common.privacy.accounting import Release, pld_epsilon
from common.privacy.ledger import read_ledger
from common.training.dp_sgd import sampling_rate
from tests.helpers import BASE, write_cycle_attributes
from tests.helpers import launch_run as run


def attribute_settings(cycle_log: Path, folder: Path, embedding: str) -> dict[str, str]:
    """The run settings of an item table composed from the cycle log's item attributes."""
    attributes = write_cycle_attributes(cycle_log, folder / "attributes.csv")
    return {"item-embedding": embedding, "item-attributes": str(attributes)}


def assert_attribute_tables(folder: Path, embedding: str, attributes: Path) -> None:
    """The checkpoint holds attribute rows (and a residual table only with
    ``attributes+residual``), no item table; a device ranks from it without the file."""
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    state = checkpoint.state_dict
    # 4 attributes, padding and "no attributes" (i29)
    assert "items.weight" not in state and tuple(state["items.attributes"].shape) == (6, 8)
    assert ("items.residual" in state) == (embedding == "attributes+residual")
    attributes.unlink()
    ranked, _ = recommend(checkpoint, ["i3", "i4"], 3, {})
    assert len(ranked) == 3


@pytest.mark.simulation
def test_user_level_dp_records_each_round_and_stops_before_the_budget(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    delta = 1 / (10 * 20)
    round_release = Release(1.0, 0.5, 1)
    budget = (pld_epsilon([round_release] * 2, delta) + pld_epsilon([round_release] * 3, delta)) / 2
    settings = {"dataset": str(cycle_log), **BASE, "partition-mode": "cohort",
                "users-per-client": 10, "fraction-train": 0.5, "dp": "user",
                "target-epsilon": budget,
                **attribute_settings(cycle_log, tmp_path, "attributes")}  # fmt: skip

    folder = run(tmp_path, "user-dp", settings)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert "round 3 would exceed the privacy budget" in summary["stopped_early"]
    entries = read_ledger(folder / "ledger" / "server.jsonl")
    assert [e.round for e in entries] == [1, 2]
    assert {(e.who, e.unit, e.mechanism) for e in entries} == {("server", "user", "dp-fedavg")}
    assert [e.epsilon for e in entries] == pytest.approx(
        [pld_epsilon([round_release] * k, delta) for k in (1, 2)]
    )
    assert summary["privacy"]["epsilon"] == pytest.approx(entries[-1].epsilon)
    assert entries[-1].epsilon <= budget
    assert summary["privacy"]["delta"] == pytest.approx(delta)
    assert json.loads((folder / "audit.json").read_text())["passed"]  # the launcher audited
    assert_attribute_tables(folder, "attributes", tmp_path / "attributes.csv")


@pytest.mark.simulation
def test_local_dp_composes_across_rounds_and_clients_refuse_past_their_budget(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    part = load_partition(str(cycle_log), 2, 0, 42)
    windows = training_windows(part.split.train, 20, n_gap_buckets=0)
    delta = 1 / (10 * 20)  # the federation's 20 users, not the node's 10 windows
    rate = sampling_rate(windows, 4)
    steps = int(round(1 / rate))
    one = Release(1.0, rate, steps)
    budget = (pld_epsilon([one] * 2, delta) + pld_epsilon([one] * 3, delta)) / 2
    settings = {"dataset": str(cycle_log), **BASE, "partition-mode": "cross-silo",
                "users-per-client": 10, "fraction-train": 1.0, "dp": "local",
                "budget-epsilon": budget,
                **attribute_settings(cycle_log, tmp_path, "attributes+residual")}  # fmt: skip

    folder = run(tmp_path, "local-dp", settings)

    summary = json.loads((folder / "summary.json").read_text())
    assert "all 2 sampled clients have spent their budget" in summary["stopped_early"]
    assert summary["budget_refusals"] == 2
    entries = read_ledger(folder / "ledger" / "clients.jsonl")
    by_client: dict[str, list[float]] = {}
    for entry in entries:
        assert entry.mechanism == "dp-sgd" and entry.budget_epsilon == pytest.approx(budget)
        by_client.setdefault(entry.who, []).append(entry.epsilon)
    assert sorted(by_client) == ["client-0", "client-1"]
    for epsilons in by_client.values():  # composed over rounds, never past the budget
        assert len(epsilons) == 2 and epsilons[0] < epsilons[1] <= budget
    assert {(e.delta, e.population, e.run_id) for e in entries} == {(delta, 20, folder.name)}
    assert json.loads((folder / "audit.json").read_text())["passed"]  # cross-checked run
    assert_attribute_tables(folder, "attributes+residual", tmp_path / "attributes.csv")
