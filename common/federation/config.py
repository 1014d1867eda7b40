"""The run config of the Flower app: every key, its type, its checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from common.data.attributes import check_attribute_source
from common.data.loaders import dataset_log_format
from common.data.partitioning import PARTITION_MODES, count_partitions
from common.federation.compression import COMPRESSIONS
from common.federation.secure_aggregation import check_secure_aggregation
from common.models import ModelConfig

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox")


DP_MODES = ("none", "user", "local")


OPTIMIZERS = ("adam", "sgd")


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
    # --- data loading (h-data): common/data/log_format.py, common/data/attributes.py ---
    dataset_columns: str = ""  # e.g. "user=customer_id,item=product_sku,timestamp=event_time"
    dataset_time_unit: str = ""  # numeric timestamps: s, ms, us, ns; "" / auto = detected
    item_attributes: str = ""  # "" = none, "builtin" = the data set's own file, or a path

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
        check_data_options(self)  # h-data: column spec, time unit, attribute source
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


def check_data_options(config: FederatedConfig) -> None:
    """h-data: the data-loading keys, checked before any file is read or process started."""
    try:
        dataset_log_format(config.dataset, config.dataset_columns, config.dataset_time_unit)
    except ValueError as error:
        raise ValueError(f"dataset-columns / dataset-time-unit: {error}") from None
    check_attribute_source(config.item_attributes, config.dataset)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check a run-config value against the field type (ints are accepted as floats)."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"run-config key {key!r} must be {kind.__name__}, got {value!r}")
