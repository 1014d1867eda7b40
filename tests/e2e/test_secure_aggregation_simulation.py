"""End to end: SecAgg+ gives FedAvg's aggregate within its quantization error.

The FedAvg reference is computed in-process (``tests.helpers.in_process_fedavg``), which
``tests/e2e/test_simulation.py`` checks against a plain simulation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.partitioning import load_partition
from common.federation.config import FederatedConfig
from common.models import build_model
from tests.helpers import (
    TINY_ITEMS,
    FedAvgTrace,
    in_process_fedavg,
    launch_run,
    metrics_rows,
    write_cycle_log,
)

# 20 users, 3 per client: 7 clients of 33 or 22 examples (unequal FedAvg weights).
SECURE_RUN = {"model": "lstm", "dim": 8, "layers": 1,
              "max-len": 10, "dropout": 0.0, "num-server-rounds": 1,
              "fraction-train": 1.0, "local-epochs": 10, "lr": 0.1, "batch-size": 16,
              "partition-mode": "cross-silo", "users-per-client": 3,
              "secagg-max-weight": 40.0}  # fmt: skip
CLIENTS = 7


@dataclass(frozen=True)
class Twins:
    """One secure run and, for the same settings, FedAvg computed in-process."""

    secure: Path
    plain: FedAvgTrace
    config: FederatedConfig


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    """The one-round run with SecAgg+, and FedAvg of the same seed without it."""
    root = tmp_path_factory.mktemp("secagg")
    settings = {"dataset": str(write_cycle_log(root / "cycle.csv")), **SECURE_RUN}
    config = FederatedConfig.from_run_config(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLWR_HOME", str(root / "flwr-home"))
        secure = launch_run(root, "secure", {**settings, "secure-aggregation": True})
    yield Twins(secure, in_process_fedavg(config, CLIENTS), config)


def _parameters(run: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"])


def secagg_tolerance(examples: list[int], config: FederatedConfig) -> float:
    """Largest gap between SecAgg+'s aggregate and FedAvg's, per parameter value.

    Client i sends ``d_i * p_i``, ``d_i = q_i / Q``, ``q_i = round(n_i / W * Q)``, each
    value stochastically rounded to a level of width ``2C / Q``: an error below one level.
    The server divides the sum by ``sum(d_i)``, so rounding adds at most
    ``k * (2C / Q) / sum(d_i) = 2C k / sum(q_i)``. Weighting by ``q_i / sum(q)`` instead
    of ``n_i / sum(n)`` moves a mean of values in ``[-P, P]`` by at most
    ``P * sum|q_i / sum(q) - n_i / sum(n)|``, where ``P = C / min(d_i)`` bounds a value
    that was not clipped. Both runs also round to float32: about ``2k + 2`` roundings of
    at most ``P * 2**-24`` each.
    """
    q_range, clip = config.secagg_quantization_range, config.secagg_clipping_range
    n = np.asarray(examples, dtype=float)
    q = np.round(n / config.secagg_max_weight * q_range)
    peak = clip / (q.min() / q_range)
    rounding = 2 * clip * len(n) / q.sum()
    weighting = peak * float(np.abs(q / q.sum() - n / n.sum()).sum())
    float32 = (2 * len(n) + 2) * peak * 2.0**-24
    return float(rounding + weighting + float32)


@pytest.mark.simulation
def test_secure_aggregate_equals_fedavg_within_quantization_error(twins: Twins) -> None:
    config = twins.config
    examples = [
        int((load_partition(config.dataset, CLIENTS, pid, config.seed)
             .training_windows(config.max_len).targets > 0).sum())
        for pid in range(CLIENTS)
    ]  # fmt: skip
    tolerance = secagg_tolerance(examples, config)
    plain = {name: value.detach() for name, value in twins.plain.model.state_dict().items()}
    secure = _parameters(twins.secure)

    gap = max(float((plain[name] - secure[name]).abs().max()) for name in plain)

    assert sorted(set(examples)) == [22, 33]  # unequal weights: the weighting is exercised
    assert tolerance < 2e-5  # 2**22 levels on [-8, 8]: a tight bound, not a vacuous one
    assert 0.0 < gap <= tolerance  # > 0: the secure run really went through quantization
    torch.manual_seed(config.seed)  # the server's initial model
    untrained = build_model(config.model_config(), TINY_ITEMS).state_dict()
    moved = max(float((plain[name] - untrained[name]).abs().max()) for name in plain)
    assert gap < 1e-3 * moved  # tiny next to what one round of training moves


@pytest.mark.simulation
def test_secure_run_completes_and_records_like_fedavg(twins: Twins) -> None:
    run = twins.secure

    summary = json.loads((run / "summary.json").read_text())
    rows = metrics_rows(run)

    for name in ("metrics.csv", "summary.json", "checkpoint.pt", "best_checkpoint.pt",
                 "valid_ndcg.png", "train_loss.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert summary["status"] == "completed" and summary["config"]["secure-aggregation"] is True
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert rows[1]["clients"] == f"{CLIENTS}.0"
    assert float(rows[1]["examples"]) == twins.plain.examples[0]
    assert float(rows[1]["train_loss"]) == pytest.approx(twins.plain.train_loss[0])
    assert float(rows[1]["valid_ndcg@10"]) > float(rows[0]["valid_ndcg@10"])
    assert "Secure aggregation completed." in (run / "flwr.log").read_text()
