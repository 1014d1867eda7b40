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
def test_cohorts_match_one_flower_client_per_user_and_repeat_exactly(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    base = {"dataset": str(cycle_log), **RUN}

    per_user = run(tmp_path, "per-user", {**base, "partition-mode": "cross-device"})
    cohort_run = {**base, "partition-mode": "cohort", "users-per-client": 10,
                  "fraction-train": 0.6}  # fmt: skip
    cohorts = run(tmp_path, "cohorts", {**cohort_run, "fraction-train": 1.0})
    sampled = [run(tmp_path, f"sampled-{i}", cohort_run) for i in (1, 2)]

    first = torch.load(per_user / "checkpoint.pt", weights_only=True)["state_dict"]
    second = torch.load(cohorts / "checkpoint.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for name in first:  # bfloat16 score products make the two batchings differ slightly
        torch.testing.assert_close(second[name], first[name], rtol=1e-2, atol=2e-3)
    first_sampled, second_sampled = (
        torch.load(folder / "checkpoint.pt", weights_only=True)["state_dict"] for folder in sampled
    )
    for name in first_sampled:  # same seed, same Poisson samples, same model: bit for bit
        assert torch.equal(first_sampled[name], second_sampled[name]), name
    summary = json.loads((cohorts / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["valid"]["ndcg@10"] > summary["untrained_valid"]["ndcg@10"]
