"""End to end: attribute-composed item tables in real Flower simulations, under
user-level DP (cohorts, exact clipping, server noise) and local DP (Opacus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.recommend import recommend
from common.federation.checkpoints import load_checkpoint
from tests.helpers import BASE, write_cycle_attributes
from tests.helpers import launch_run as run

MODES = {  # name: (item-embedding, privacy settings)
    "user-dp": ("attributes", {"partition-mode": "cohort", "users-per-client": 10,
                               "fraction-train": 0.5, "dp": "user"}),
    "local-dp": ("attributes+residual", {"partition-mode": "cross-silo",
                                         "users-per-client": 10, "dp": "local"}),
}  # fmt: skip


@pytest.mark.simulation
@pytest.mark.parametrize("name", MODES)
def test_attribute_tables_train_privately_and_rebuild_from_the_checkpoint(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    attributes = write_cycle_attributes(cycle_log, tmp_path / "attributes.csv")
    embedding, privacy = MODES[name]
    settings = {"dataset": str(cycle_log), **BASE, "num-server-rounds": 2, **privacy,
                "item-embedding": embedding, "item-attributes": str(attributes)}  # fmt: skip

    folder = run(tmp_path, name, settings)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert json.loads((folder / "audit.json").read_text())["passed"]  # ledgered releases
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    state = checkpoint.state_dict
    # 4 attributes, padding and "no attributes" (i29)
    assert "items.weight" not in state and tuple(state["items.attributes"].shape) == (6, 8)
    assert ("items.residual" in state) == (embedding == "attributes+residual")
    attributes.unlink()  # a device rebuilds the model from the checkpoint alone
    ranked, _ = recommend(checkpoint, ["i3", "i4"], 3, {})
    assert len(ranked) == 3
