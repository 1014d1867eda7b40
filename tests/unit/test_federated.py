"""The federated task: config, ArrayRecord conversion, local training, exact metric sums."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi

from common.data.partitioning import load_partition, load_split
from common.evaluation.scoring import evaluate_model
from common.federation.config import FederatedConfig, config_of_run, results_dir_of_run
from common.federation.messages import load_arrays, model_to_arrays
from common.federation.metrics import evaluation_sums, metrics_from_sums, sum_metric_records
from common.federation.strategies import build_strategy
from common.models import ModelConfig, build_model
from common.training.local import train_local
from tests.helpers import PROJECT_ROOT


def test_config_defaults_match_the_app_run_config() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    assert FederatedConfig.from_run_config(defaults).to_run_config() == defaults
    assert FederatedConfig().to_run_config() == defaults


def app_run_config_defaults() -> dict[str, object]:
    """``[tool.flwr.app.config]`` of pyproject.toml: the defaults `flwr run .` starts from."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return dict(pyproject["tool"]["flwr"]["app"]["config"])


@pytest.mark.parametrize("key", list(FederatedConfig().to_run_config()))
def test_every_run_config_default_in_pyproject_equals_the_dataclass_default(key: str) -> None:
    defaults = app_run_config_defaults()

    assert key in defaults, f"pyproject.toml lacks run-config key {key!r}"
    assert defaults[key] == FederatedConfig().to_run_config()[key]


@pytest.mark.parametrize("field", dataclasses.fields(ModelConfig), ids=lambda f: f.name)
def test_every_model_option_is_a_run_config_key_with_the_model_default(
    field: dataclasses.Field[object],
) -> None:
    key = "model" if field.name == "name" else field.name
    changed = {"name": "lstm", "norm": "pre", "dropout": 0.5, "heads": 4,
               "item_embedding": "attributes",
               "positions": "rotary", "item_skip": True}.get(field.name, 3)  # fmt: skip
    needs = {"item-attributes": "attributes.csv"} if field.name == "item_embedding" else {}

    assert getattr(FederatedConfig(), key) == field.default
    config = FederatedConfig.from_run_config({key.replace("_", "-"): changed, **needs})
    assert getattr(config.model_config(), field.name) == changed


def test_empty_results_dir_is_the_run_folder_under_flwr_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / ".flwr"))

    config = config_of_run({"results-dir": ""}, run_id=123)

    assert config.results_dir == str(tmp_path / ".flwr" / "results" / "run-123")
    assert results_dir_of_run(str(tmp_path), 123) == tmp_path
    with pytest.raises(ValueError, match="'results-dir' must be an absolute folder or empty"):
        config_of_run({"results-dir": "runs/x"}, run_id=123)


def test_config_rejects_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="unknown run-config key 'epochs'"):
        FederatedConfig.from_run_config({"epochs": 3})
    with pytest.raises(ValueError, match="'dim' must be an integer, got 'big'"):
        FederatedConfig.from_run_config({"dim": "big"})
    with pytest.raises(ValueError, match="strategy must be one of"):
        FederatedConfig.from_run_config({"strategy": "fedsgd"})
    assert FederatedConfig.from_run_config({"lr": 1}).lr == 1.0


def test_lstm_arrays_round_trip_without_duplicate_weights() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lstm", dim=8, layers=2, max_len=6), n_items=20)
    unique = dict(model.named_parameters())
    assert list(model.state_dict()) == list(unique)  # no aliased copies of any weight

    arrays = model_to_arrays(model)

    assert list(arrays.keys()) == list(unique)
    assert sum(a.numpy().size for a in arrays.values()) == sum(p.numel() for p in unique.values())
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(name="lstm", dim=8, layers=2, max_len=6), n_items=20)
    load_arrays(fresh, arrays)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_load_arrays_refuses_a_different_model() -> None:
    small = build_model(ModelConfig(name="lstm", dim=8, max_len=6), n_items=20)
    other = build_model(ModelConfig(name="attention", dim=8, max_len=6), n_items=20)
    with pytest.raises(ValueError, match="ArrayRecord does not match the model"):
        load_arrays(small, model_to_arrays(other))
    wider = build_model(ModelConfig(name="lstm", dim=8, max_len=6), n_items=21)
    with pytest.raises(ValueError, match="items.weight: shape"):
        load_arrays(small, model_to_arrays(wider))


@pytest.mark.parametrize("partitions", [20, 6])
def test_summed_client_metrics_equal_centralized_evaluation(
    cycle_log: Path, partitions: int
) -> None:
    config = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=8, max_len=6)
    split = load_split(config.dataset)
    torch.manual_seed(0)
    model = build_model(config.model_config(), split.n_items)
    replies = []
    for partition_id in range(partitions):
        part = load_partition(config.dataset, partitions, partition_id, config.seed)
        sums = evaluation_sums(model, part.split, "valid", config)
        replies.append(RecordDict({"metrics": MetricRecord(sums)}))  # type: ignore[arg-type]

    federated = metrics_from_sums(sum_metric_records(replies, "num-examples"))

    central = evaluate_model(model, split, "valid", config.max_len)
    assert federated == pytest.approx(central, rel=1e-12)
    assert federated["count"] == 20


def test_local_training_lowers_loss_and_counts_examples(cycle_log: Path) -> None:
    config = FederatedConfig(
        dataset=str(cycle_log), model="lstm", dim=8, max_len=6, dropout=0.0, lr=0.05, local_epochs=5
    )
    part = load_partition(config.dataset, 4, 0, config.seed)
    windows = part.training_windows(config.max_len)
    torch.manual_seed(0)
    model = build_model(config.model_config(), part.split.n_items)

    first, examples = train_local(model, windows, config, seed=1)
    later, _ = train_local(model, windows, config, seed=2)

    assert examples == int(sum(len(s) - 1 for s in part.split.train))
    assert later < first


def test_proximal_term_keeps_the_update_near_the_global_model(cycle_log: Path) -> None:
    config = FederatedConfig(
        dataset=str(cycle_log),
        model="lstm",
        dim=8,
        max_len=6,
        lr=0.05,
        batch_size=2,
        local_epochs=3,
    )
    part = load_partition(config.dataset, 4, 1, config.seed)
    windows = part.training_windows(config.max_len)
    distances = []
    for mu in (0.0, 50.0):
        torch.manual_seed(0)
        model = build_model(config.model_config(), part.split.n_items)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_local(model, windows, config, seed=3, proximal_mu=mu)
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        distances.append(float((end - start).norm()))
    assert distances[1] < 0.5 * distances[0]


def test_build_strategy_uses_flowers_classes() -> None:
    def config(strategy: str) -> FederatedConfig:
        return FederatedConfig(
            strategy=strategy, fraction_train=0.5, server_lr=0.03, proximal_mu=0.1
        )

    kinds = {"fedavg": FedAvg, "fedadam": FedAdam, "fedyogi": FedYogi, "fedprox": FedProx}
    for name, kind in kinds.items():
        strategy = build_strategy(config(name), num_partitions=8)
        assert type(strategy) is kind
        assert strategy.min_available_nodes == 8 and strategy.fraction_train == 0.5
    adam = build_strategy(config("fedadam"), 8)
    assert isinstance(adam, FedAdam) and adam.eta == 0.03
    prox = build_strategy(config("fedprox"), 8)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.1


def test_sum_metric_records_adds_every_key() -> None:
    replies = [
        RecordDict({"m": MetricRecord({"count": 2.0, "num-examples": 2})}),
        RecordDict({"m": MetricRecord({"count": 3.0, "num-examples": 3})}),
    ]
    total = sum_metric_records(replies, "num-examples")
    assert dict(total) == {"count": 5.0, "num-examples": 5.0}
    assert np.isclose(float(total["count"]), 5.0)  # type: ignore[arg-type]
