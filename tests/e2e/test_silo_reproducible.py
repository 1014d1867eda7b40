"""End to end: two cross-silo simulations with one seed and no DP end in the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import launch_run, metrics_rows

# 10 nodes of 2 users: 10 float32 replies a round, summed in arrival order before the fix
SILO = {"model": "lstm", "dim": 8, "layers": 1, "max-len": 20, "dropout": 0.2,
        "partition-mode": "cross-silo", "users-per-client": 2, "fraction-train": 1.0,
        "num-server-rounds": 2, "local-epochs": 1, "optimizer": "adam", "lr": 0.01,
        "batch-size": 8, "strategy": "fedavg", "dp": "none", "seed": 42}  # fmt: skip


@pytest.mark.simulation
def test_two_silo_runs_with_one_seed_give_the_same_model_bit_for_bit(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **SILO}

    runs = [launch_run(tmp_path, f"silo-{i}", settings) for i in (1, 2)]

    first, second = (
        torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"] for run in runs
    )
    assert first.keys() == second.keys()
    for name in first:  # dropout, shuffling and the aggregation order are all seeded/fixed
        assert torch.equal(first[name], second[name]), name
    losses = [[row["train_loss"] for row in metrics_rows(run)] for run in runs]
    assert losses[0] == losses[1]
    assert len([loss for loss in losses[0] if loss]) == SILO["num-server-rounds"]
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
