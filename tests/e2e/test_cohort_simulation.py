"""End to end: cohorts of users in a real Flower simulation give one-client-per-user FedAvg."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import launch_run as run

RUN = {"model": "lstm", "dim": 8, "layers": 1,
       "max-len": 20, "dropout": 0.0, "num-server-rounds": 2,
       "fraction-train": 1.0, "local-epochs": 1, "optimizer": "sgd", "lr": 0.5,
       "batch-size": 16, "strategy": "fedavg"}  # fmt: skip


@pytest.mark.simulation
def test_cohorts_match_one_flower_client_per_user(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every user trains in both runs, so FedAvg over users must come out the same. That
    a seed repeats a run of sampled cohorts bit for bit is asserted by
    ``tests/e2e/test_resume.py``: its uninterrupted run and its killed one sample their
    cohorts' users apart, by seed and round, and must end in one model."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    base = {"dataset": str(cycle_log), **RUN}

    per_user = run(tmp_path, "per-user", {**base, "partition-mode": "cross-device"})
    cohorts = run(tmp_path, "cohorts", {**base, "partition-mode": "cohort", "users-per-client": 10})

    first = torch.load(per_user / "checkpoint.pt", weights_only=True)["state_dict"]
    second = torch.load(cohorts / "checkpoint.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for name in first:  # bfloat16 score products make the two batchings differ slightly
        torch.testing.assert_close(second[name], first[name], rtol=1e-2, atol=2e-3)
    summary = json.loads((cohorts / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["valid"]["ndcg@10"] > summary["untrained_valid"]["ndcg@10"]
