"""Secure aggregation: settings, range checks and, end to end, SecAgg+ equals FedAvg."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.federated import FederatedConfig, load_arrays
from common.models import build_model
from common.partitioning import load_partition
from common.secure_aggregation import (
    arrays_from_ndarrays,
    check_round_size,
    check_weighted_range,
    model_ndarrays,
    share_setting,
)
from server.secure_aggregation import client_reason
from simulations.launch import main
from tests.conftest import TINY_ITEMS, write_cycle_log
from tests.test_simulation import free_port, write_preset

# 20 users, 3 per client: 7 clients of 33 or 22 examples (unequal FedAvg weights).
SECURE_RUN = {"model": "lstm", "dim": 8, "max-len": 10, "dropout": 0.0, "num-server-rounds": 1,
              "fraction-train": 1.0, "local-epochs": 10, "lr": 0.1, "batch-size": 16,
              "partition-mode": "cross-silo", "users-per-client": 3,
              "secagg-max-weight": 40.0}  # fmt: skip
CLIENTS = 7


def test_share_settings_above_one_are_counts_and_below_are_fractions() -> None:
    assert share_setting(3.0, "k") == 3 and isinstance(share_setting(3.0, "k"), int)
    assert share_setting(0.5, "k") == 0.5
    assert share_setting(1, "k") == 1.0 and isinstance(share_setting(1, "k"), float)
    with pytest.raises(ValueError, match="k above 1 is a number of clients and must be whole"):
        share_setting(2.5, "k")
    with pytest.raises(ValueError, match="k must be > 0"):
        share_setting(0.0, "k")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"strategy": "fedadam"}, "secure-aggregation works with strategy fedavg or fedprox"),
        ({"fraction-evaluate": 0.5}, "secure-aggregation needs fraction-evaluate = 0"),
        ({"secagg-num-shares": 5, "secagg-reconstruction-threshold": 5}, r"threshold \(5\)"),
        ({"secagg-num-shares": 2}, "secagg-num-shares as a count must be at least 3"),
        ({"secagg-quantization-range": 2**32}, "secagg-quantization-range must be in"),
    ],
)
def test_config_refuses_settings_secagg_cannot_serve(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig.from_run_config({"secure-aggregation": True, **keys})


def test_config_keeps_other_strategies_when_secure_aggregation_is_off() -> None:
    config = FederatedConfig.from_run_config({"strategy": "fedadam", "fraction-evaluate": 0.5})

    assert not config.secure_aggregation and config.strategy == "fedadam"


def test_round_size_needs_two_clients_and_no_overflow() -> None:
    config = FederatedConfig(secure_aggregation=True, secagg_quantization_range=2**22)

    check_round_size(1023, config)  # 1023 * 2**22 < 2**32
    with pytest.raises(ValueError, match="at least 2 clients per round"):
        check_round_size(1, config)
    with pytest.raises(ValueError, match="1024 clients per round overflows"):
        check_round_size(1024, config)


def test_weighted_range_check_names_the_key_to_raise() -> None:
    config = FederatedConfig(secagg_max_weight=100.0, secagg_clipping_range=2.0)
    arrays = [np.array([0.5, -3.0], dtype=np.float32)]

    check_weighted_range(50, arrays, config)  # 3.0 * 50 / 100 = 1.5 <= 2
    with pytest.raises(ValueError, match="reaches 2.4, beyond secagg-clipping-range 2"):
        check_weighted_range(80, arrays, config)
    with pytest.raises(ValueError, match="has 101 examples, more than secagg-max-weight 100"):
        check_weighted_range(101, arrays, config)


def test_legacy_parameter_list_round_trips_through_the_model() -> None:
    config = FederatedConfig(model="lstm", dim=8, max_len=10)
    torch.manual_seed(0)
    source, target = build_model(config.model_config(), 30), build_model(config.model_config(), 30)
    ndarrays = model_ndarrays(source)

    load_arrays(target, arrays_from_ndarrays(target, ndarrays))

    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="got 1 arrays for a model of"):
        arrays_from_ndarrays(target, ndarrays[:1])


def test_client_reason_unwraps_the_ray_traceback() -> None:
    wrapped = (
        "Error(code=2, reason='<class RayTaskError>:<ray::ClientAppActor.run() ...\\n"
        "Exception ClientAppException occurred. Message: this client has 22 examples\\'>')"
    )

    assert client_reason(Exception(wrapped)) == "this client has 22 examples"
    assert client_reason(Exception("plain")) == "plain"


def _run(settings: dict[str, Any], root: Path, label: str) -> Path:
    """One launcher run of ``settings`` under ``root/label``; returns its run folder."""
    preset = write_preset(root / f"{label}.toml", settings)
    results = root / label
    code = main(["--preset", str(preset), "--results", str(results), "--port", str(free_port())])
    assert code == 0, label
    (run,) = results.iterdir()
    return run


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The same one-round run twice, same seed: plain FedAvg, then SecAgg+."""
    root = tmp_path_factory.mktemp("secagg")
    dataset = write_cycle_log(root / "cycle.csv")
    settings = {"dataset": str(dataset), **SECURE_RUN}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLWR_HOME", str(root / "flwr-home"))
        yield {
            "plain": _run(settings, root, "plain"),
            "secure": _run({**settings, "secure-aggregation": True}, root, "secure"),
            "dataset": dataset,
        }


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


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
def test_secure_aggregate_equals_fedavg_within_quantization_error(
    twin_runs: dict[str, Path],
) -> None:
    config = FederatedConfig.from_run_config({"dataset": str(twin_runs["dataset"]), **SECURE_RUN})
    examples = [
        int((load_partition(config.dataset, CLIENTS, pid, config.seed)
             .training_windows(config.max_len).targets > 0).sum())
        for pid in range(CLIENTS)
    ]  # fmt: skip
    tolerance = secagg_tolerance(examples, config)
    plain, secure = _parameters(twin_runs["plain"]), _parameters(twin_runs["secure"])

    gap = max(float((plain[name] - secure[name]).abs().max()) for name in plain)

    assert sorted(set(examples)) == [22, 33]  # unequal weights: the weighting is exercised
    assert tolerance < 2e-5  # 2**22 levels on [-8, 8]: a tight bound, not a vacuous one
    assert 0.0 < gap <= tolerance  # > 0: the secure run really went through quantization
    torch.manual_seed(config.seed)  # the server's initial model
    untrained = build_model(config.model_config(), TINY_ITEMS).state_dict()
    moved = max(float((plain[name] - untrained[name]).abs().max()) for name in plain)
    assert gap < 1e-3 * moved  # tiny next to what one round of training moves


@pytest.mark.simulation
def test_secure_run_completes_and_records_like_a_plain_run(twin_runs: dict[str, Path]) -> None:
    run = twin_runs["secure"]

    summary = json.loads((run / "summary.json").read_text())
    rows, plain_rows = _rows(run), _rows(twin_runs["plain"])

    for name in ("metrics.csv", "summary.json", "checkpoint.pt", "best_checkpoint.pt",
                 "valid_ndcg.png", "train_loss.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert summary["status"] == "completed" and summary["config"]["secure-aggregation"] is True
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert rows[1]["clients"] == f"{CLIENTS}.0"
    assert float(rows[1]["examples"]) == float(plain_rows[1]["examples"])
    assert float(rows[1]["train_loss"]) == pytest.approx(float(plain_rows[1]["train_loss"]))
    assert float(rows[1]["valid_ndcg@10"]) > float(rows[0]["valid_ndcg@10"])
    log = (run / "flwr.log").read_text()
    assert "Secure aggregation completed." in log
    assert "Secure aggregation completed." not in (twin_runs["plain"] / "flwr.log").read_text()
