"""Flower's own strategies, built from the run config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.federation.config import FederatedConfig
from common.federation.messages import ARRAYS, CONFIG, WEIGHT_KEY
from common.federation.metrics import sum_metric_records
from common.federation.reliability import ROBUST_STRATEGIES

if TYPE_CHECKING:
    from flwr.serverapp.strategy import FedAvg


def build_strategy(
    config: FederatedConfig,
    num_partitions: int,
    train_metrics_aggr_fn: Any = None,
    evaluate_metrics_aggr_fn: Any = None,
) -> FedAvg:
    """Flower's own strategy for ``config.strategy``; waits for all ``num_partitions`` nodes."""
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

    common: dict[str, Any] = {
        # cohorts all train every round; users are Poisson-sampled inside them
        "fraction_train": 1.0 if config.partition_mode == "cohort" else config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": num_partitions,
        "weighted_by_key": WEIGHT_KEY,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
        "train_metrics_aggr_fn": train_metrics_aggr_fn,
        "evaluate_metrics_aggr_fn": evaluate_metrics_aggr_fn or sum_metric_records,
    }
    if config.strategy == "fedadam":
        return FedAdam(**common, eta=config.server_lr, eta_l=config.lr, tau=config.server_tau)
    if config.strategy == "fedyogi":
        return FedYogi(**common, eta=config.server_lr, eta_l=config.lr, tau=config.server_tau)
    if config.strategy == "fedavgm":
        return FedAvgM(
            **common, server_learning_rate=config.server_lr, server_momentum=config.server_momentum
        )
    if config.strategy == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if config.strategy in ROBUST_STRATEGIES:
        return build_robust_strategy(config, common)
    return FedAvg(**common)


def build_robust_strategy(config: FederatedConfig, common: dict[str, Any]) -> FedAvg:
    """Flower's Byzantine-robust strategy named by ``config.strategy``.

    They see each client's update separately, so they make no sense with cohorts
    (refused by :func:`common.federation.reliability.check_reliability`).
    """
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    byzantine = config.byzantine_clients
    if config.strategy == "fedmedian":
        return FedMedian(**common)
    if config.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=config.trimmed_beta)
    if config.strategy == "krum":
        return Krum(**common, num_malicious_nodes=byzantine)
    if config.strategy == "multikrum":
        return MultiKrum(
            **common, num_malicious_nodes=byzantine, num_nodes_to_select=config.krum_select
        )
    if config.strategy == "bulyan":
        return Bulyan(**common, num_malicious_nodes=byzantine)
    raise ValueError(f"strategy {config.strategy!r} is not one of {ROBUST_STRATEGIES}")
