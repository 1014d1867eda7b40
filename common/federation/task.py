"""The federated task: run config, model <-> ArrayRecord, local training, metric sums.

Client and server apps stay thin adapters around this module. Evaluation travels as
sums and counts (:meth:`common.evaluation.ranking.RankingAccumulator.to_sums`), so the server
aggregates metrics exactly instead of averaging averages.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from common.data.features import TrainingWindows
from common.data.partitioning import (
    PARTITION_MODES,
    ClientPartition,
    count_partitions,
    load_partition,
    load_split,
)
from common.data.sequences import LeaveOneOutSplit
from common.evaluation.ranking import RankingAccumulator
from common.evaluation.scoring import (
    evaluate_scorer,
    evaluation_mode,
    flatten_metrics,
    model_scorer,
)
from common.federation.compression import COMPRESSIONS
from common.federation.secure_aggregation import check_secure_aggregation
from common.models import ModelConfig, SequenceRecommender
from common.training.centralized import train_epoch

if TYPE_CHECKING:
    from flwr.serverapp.strategy import FedAvg

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox")
DP_MODES = ("none", "user", "local")
OPTIMIZERS = ("adam", "sgd")
UNEXCLUDED_PREFIX = "unexcluded."
WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class FederatedConfig:
    """Every run-config key of the Flower app; kebab-case there, snake_case here."""

    dataset: str = "ml-100k"
    model: str = "attention"
    dim: int = 32
    layers: int = 1
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    n_gap_buckets: int = 0
    num_server_rounds: int = 10
    fraction_train: float = 0.1
    fraction_evaluate: float = 0.0
    local_epochs: int = 1
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    strategy: str = "fedavg"
    server_lr: float = 1e-2
    server_tau: float = 1e-3
    server_momentum: float = 0.9
    proximal_mu: float = 0.0
    eval_every: int = 1
    seed: int = 42
    results_dir: str = ""
    partition_mode: str = "cross-device"
    users_per_client: int = 100
    client_threads: int = 1
    dp: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    budget_epsilon: float = 0.0
    deployment_nodes: int = 0
    secure_aggregation: bool = False
    secagg_num_shares: float = 3.0
    secagg_reconstruction_threshold: float = 2.0
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 2**22
    secagg_max_weight: float = 10000.0
    update_compression: str = "none"
    initial_checkpoint: str = ""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(
                f"partition-mode must be one of {', '.join(PARTITION_MODES)}, "
                f"got {self.partition_mode!r}"
            )
        for name in ("num_server_rounds", "local_epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.dp not in DP_MODES:
            raise ValueError(f"dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}")
        if self.dp == "user" and self.partition_mode != "cohort":
            raise ValueError(
                "dp = 'user' (user-level DP-FedAvg with Poisson-sampled users) needs "
                "partition-mode = 'cohort'"
            )
        if self.dp == "local" and self.partition_mode == "cohort":
            raise ValueError("dp = 'local' trains one DP-SGD client per Flower client: "
                             "use partition-mode cross-device or cross-silo")  # fmt: skip
        if min(self.noise_multiplier, self.target_epsilon, self.budget_epsilon) < 0:
            raise ValueError("noise-multiplier, target-epsilon and budget-epsilon must be >= 0")
        if self.clip_norm <= 0:
            raise ValueError(f"clip-norm must be > 0, got {self.clip_norm}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        if self.deployment_nodes < 0:
            raise ValueError(f"deployment-nodes must be >= 0, got {self.deployment_nodes}")
        if self.users_per_client < 1 or self.client_threads < 1:
            raise ValueError("users-per-client and client-threads must be positive")
        if not 0.0 < self.fraction_train <= 1.0 or not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ValueError("fraction-train must be in (0, 1] and fraction-evaluate in [0, 1]")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server-momentum must be in [0, 1), got {self.server_momentum}")
        if self.lr <= 0 or self.server_lr <= 0 or self.server_tau <= 0 or self.proximal_mu < 0:
            raise ValueError("lr, server-lr and server-tau must be > 0, proximal-mu >= 0")
        if self.update_compression not in COMPRESSIONS:
            raise ValueError(
                f"update-compression must be one of {', '.join(COMPRESSIONS)}, "
                f"got {self.update_compression!r}"
            )
        self.model_config()  # validates the architecture keys
        check_secure_aggregation(self)
        if self.update_compression != "none" and (
            self.partition_mode == "cohort" or self.secure_aggregation
        ):
            raise ValueError(
                "update-compression applies to per-client model updates: not with "
                "partition-mode = 'cohort' or secure-aggregation"
            )
        if self.secure_aggregation and (self.partition_mode == "cohort" or self.dp != "none"):
            raise ValueError(
                "secure-aggregation runs on the legacy FedAvg path: it needs partition-mode "
                "cross-device or cross-silo and dp = 'none'"
            )

    def model_config(self) -> ModelConfig:
        """The architecture part of the config."""
        return ModelConfig(
            name=self.model,
            dim=self.dim,
            layers=self.layers,
            heads=self.heads,
            dropout=self.dropout,
            max_len=self.max_len,
            n_gap_buckets=self.n_gap_buckets,
        )

    def num_partitions(self, n_users: int) -> int:
        """Number of clients this config gives for ``n_users`` users."""
        return count_partitions(self.partition_mode, n_users, self.users_per_client)

    def federation_size(self, n_users: int) -> int:
        """Nodes the server waits for: ``deployment-nodes``, else the simulation's clients."""
        return self.deployment_nodes or self.num_partitions(n_users)

    def to_run_config(self) -> dict[str, Any]:
        """Kebab-case keys, as in ``[tool.flwr.app.config]``."""
        return {key.replace("_", "-"): value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederatedConfig:
        """Build from Flower's run config; unknown keys and wrong types are errors."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in hints:
                raise ValueError(f"unknown run-config key {key!r}")
            values[name] = _coerce(key, value, hints[name])
        return cls(**values)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check a run-config value against the field type (ints are accepted as floats)."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"run-config key {key!r} must be {kind.__name__}, got {value!r}")


def configure_app_logging(logger: logging.Logger) -> None:
    """Print ``logger``'s INFO lines once, and Flower's once.

    Importing Opacus runs ``logging.basicConfig`` (a root handler), so every Flower
    line would otherwise appear twice in the run log: stop both from propagating.
    """
    logging.getLogger("flwr").propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def client_partition(config: FederatedConfig, node_config: Mapping[str, Any]) -> ClientPartition:
    """This node's partition, checked against the number of partitions the config implies."""
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise ValueError(f"node config lacks {key!r} (got keys {sorted(node_config)})")
    partition_id, num_partitions = (
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
    )
    n_users = load_split(config.dataset).n_users
    expected = config.num_partitions(n_users)
    if num_partitions != expected:
        raise ValueError(
            f"the federation has {num_partitions} nodes but partition-mode "
            f"{config.partition_mode!r} gives {expected} clients for {n_users} users"
        )
    return load_partition(config.dataset, num_partitions, partition_id, config.seed)


def model_to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """Parameters in ``named_parameters()`` order; shared or aliased tensors appear once."""
    return ArrayRecord(
        {
            name: Array(param.detach().cpu().numpy().copy())
            for name, param in model.named_parameters()
        }
    )


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Copy an ArrayRecord into the model's parameters; names and shapes must match."""
    params = dict(model.named_parameters())
    missing, unexpected = set(params) - set(arrays), set(arrays) - set(params)
    if missing or unexpected:
        raise ValueError(
            f"ArrayRecord does not match the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.asarray(arrays[name].numpy()))
            if value.shape != param.shape:
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} does not match the model's "
                    f"{tuple(param.shape)}"
                )
            param.copy_(value)


def train_local(
    model: SequenceRecommender,
    windows: TrainingWindows,
    config: FederatedConfig,
    seed: int,
    proximal_mu: float = 0.0,
) -> tuple[float, int]:
    """``local-epochs`` passes over the client's windows; returns (mean loss, examples).

    An example is one next-item prediction (a non-padding target). With
    ``proximal_mu > 0`` the FedProx term ``mu / 2 * ||w - w_global||^2`` is added
    through its gradient just before each optimizer step; the reported loss excludes it.
    """
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    examples = int((windows.targets > 0).sum())
    if examples == 0:
        return 0.0, 0
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=config.lr)
        if config.optimizer == "adam"
        else torch.optim.SGD(params, lr=config.lr)
    )
    if proximal_mu > 0:
        anchors = [p.detach().clone() for p in params]

        def add_proximal_gradient(*_: object) -> None:
            with torch.no_grad():
                for param, anchor in zip(params, anchors, strict=True):
                    if param.grad is not None:
                        param.grad.add_(param - anchor, alpha=proximal_mu)

        optimizer.register_step_pre_hook(add_proximal_gradient)
    losses = [
        train_epoch(model, optimizer, windows, config.batch_size, rng)
        for _ in range(config.local_epochs)
    ]
    return float(np.mean(losses)), examples


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed for one client in one round."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def evaluation_sums(
    model: SequenceRecommender, split: LeaveOneOutSplit, stage: str, config: FederatedConfig
) -> dict[str, float]:
    """Metric sums (history excluded, and ``unexcluded.``-prefixed) plus ``num-examples``."""
    with evaluation_mode(model):
        scorer = model_scorer(model, config.max_len, config.n_gap_buckets)
        excluded, unexcluded = evaluate_scorer(scorer, split, stage)
    sums = excluded.to_sums()
    sums.update({UNEXCLUDED_PREFIX + key: value for key, value in unexcluded.to_sums().items()})
    sums[WEIGHT_KEY] = float(excluded.count)
    return sums


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Mean metrics (headline and ``_unexcluded`` twins) from aggregated sums."""
    excluded = RankingAccumulator.from_sums(
        {k: float(v) for k, v in sums.items() if not k.startswith(UNEXCLUDED_PREFIX)}
    )
    unexcluded = RankingAccumulator.from_sums(
        {
            k[len(UNEXCLUDED_PREFIX) :]: float(v)
            for k, v in sums.items()
            if k.startswith(UNEXCLUDED_PREFIX)
        }
    )
    return flatten_metrics(excluded, unexcluded)


def sum_metric_records(
    records: list[RecordDict], weighted_by_key: str = WEIGHT_KEY
) -> MetricRecord:
    """Add up every key of the replies' MetricRecords (Flower ``*_metrics_aggr_fn``)."""
    total: dict[str, float] = {}
    for record in records:
        for metrics in record.metric_records.values():
            for key, value in metrics.items():
                if isinstance(value, list):
                    raise ValueError(f"metric {key!r} is a list; only scalar sums can be added")
                total[key] = total.get(key, 0.0) + float(value)
    return MetricRecord(total)  # type: ignore[arg-type]


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
    return FedAvg(**common)
