"""End to end: a real Flower simulation (20 clients, 2 rounds) through the launcher."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.partitioning import load_partition, load_split
from common.evaluation.scoring import evaluate_model
from common.federation.config import FederatedConfig
from common.federation.messages import load_arrays, model_to_arrays
from common.models import build_model
from common.training.local import round_seed, train_local
from simulations.launch import main
from tests.helpers import TINY_RUN, free_port, write_preset


def manual_fedavg_ndcg(config: FederatedConfig, clients: int) -> list[float]:
    """Validation NDCG@10 per round of FedAvg computed in-process, without Flower."""
    split = load_split(config.dataset)
    torch.manual_seed(config.seed)
    server = build_model(config.model_config(), split.n_items)
    scores = [evaluate_model(server, split, "valid", config.max_len)["ndcg@10"]]
    for server_round in range(1, config.num_server_rounds + 1):
        start, updates, weights = model_to_arrays(server), [], []
        for pid in range(clients):
            part = load_partition(config.dataset, clients, pid, config.seed)
            local = build_model(config.model_config(), split.n_items)
            load_arrays(local, start)
            seed = round_seed(config.seed, server_round, pid)
            _, examples = train_local(local, part.training_windows(config.max_len), config, seed)
            updates.append(dict(local.named_parameters()))
            weights.append(examples)
        share = np.asarray(weights) / sum(weights)
        with torch.no_grad():
            for name, param in server.named_parameters():
                param.copy_(
                    torch.stack(
                        [float(w) * u[name] for w, u in zip(share, updates, strict=True)]
                    ).sum(0)
                )
        scores.append(evaluate_model(server, split, "valid", config.max_len)["ndcg@10"])
    return scores


@pytest.mark.simulation
def test_flower_simulation_trains_and_reports(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **TINY_RUN}
    preset = write_preset(tmp_path / "tiny.toml", settings)
    results = tmp_path / "results"

    code = main(["--preset", str(preset), "--results", str(results), "--port", str(free_port())])

    assert code == 0
    (run,) = results.iterdir()
    for name in ("config.json", "metrics.csv", "summary.json", "checkpoint.pt",
                 "best_checkpoint.pt", "valid_ndcg.png", "train_loss.png"):  # fmt: skip
        assert (run / name).is_file(), name
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert [r["clients"] for r in rows[1:]] == ["20.0", "20.0"]
    ndcg = [float(r["valid_ndcg@10"]) for r in rows]
    assert ndcg[2] > ndcg[0] + 0.1  # 0.29 -> 0.64 with these settings
    config = FederatedConfig.from_run_config(settings)
    assert ndcg == pytest.approx(manual_fedavg_ndcg(config, clients=20), abs=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["untrained_valid"]["ndcg@10"] == pytest.approx(ndcg[0])
    assert summary["test"]["count"] == 20
