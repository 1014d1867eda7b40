"""The run config of the Flower app: every key, its type, its checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from flwr.supercore.utils import get_flwr_home

from common.config.field_types import check_field_types, check_seed, coerce_value
from common.data.attributes import check_attribute_source
from common.data.loaders import dataset_log_format
from common.data.partitioning import PARTITION_MODES, count_partitions
from common.federation.compression import COMPRESSIONS
from common.federation.reliability import ROBUST_STRATEGIES, check_reliability
from common.federation.secure_aggregation import check_secure_aggregation
from common.federation.statistics_config import check_statistics
from common.models import MODEL_KEYS, ModelConfig

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", *ROBUST_STRATEGIES)


DP_MODES = ("none", "user", "local")


OPTIMIZERS = ("adam", "sgd")

_MODEL = ModelConfig()  # the one set of architecture defaults, centralized and federated


@dataclass(frozen=True)
class FederatedConfig:
    """Every run-config key of the Flower app; kebab-case there, snake_case here."""

    dataset: str = "ml-100k"
    # The architecture: ModelConfig's fields and defaults (``model`` is its ``name``).
    model: str = _MODEL.name
    dim: int = _MODEL.dim
    layers: int = _MODEL.layers
    heads: int = _MODEL.heads
    dropout: float = _MODEL.dropout
    max_len: int = _MODEL.max_len
    n_gap_buckets: int = _MODEL.n_gap_buckets
    ffn_multiplier: int = _MODEL.ffn_multiplier
    norm: str = _MODEL.norm
    positions: str = _MODEL.positions
    item_skip: bool = _MODEL.item_skip
    item_embedding: str = _MODEL.item_embedding
    num_server_rounds: int = 10
    fraction_train: float = 1.0
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
    # Two edge nodes of ML-100k's 943 users: Flower's default simulation (2 SuperNodes)
    partition_mode: str = "cross-silo"
    users_per_client: int = 500
    client_threads: int = 1
    dp: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    budget_epsilon: float = 0.0
    insecure_reproducible_noise: bool = False
    deployment_nodes: int = 0
    secure_aggregation: bool = False
    secagg_num_shares: float = 3.0
    secagg_reconstruction_threshold: float = 2.0
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 2**22
    secagg_max_weight: float = 10000.0
    update_compression: str = "none"
    initial_checkpoint: str = ""
    catalogue: str = ""
    population: int = 0
    dataset_columns: str = ""  # e.g. "user=customer_id,item=product_sku,timestamp=event_time"
    dataset_time_unit: str = ""  # numeric timestamps: s, ms, us, ns; "" / auto = detected
    item_attributes: str = ""  # "" = none, "builtin" = the data set's own file, or a path
    resume_from: str = ""  # a killed run's folder to continue in (server/resume/)
    ledger_key: str = ""  # deployment: the server's private key that signs its ledger entries
    # Failures and hostile updates (common/federation/reliability.py checks these).
    fault_rate: float = 0.0  # simulations: share of clients that fail each round on purpose
    fault_kind: str = "error"  # crash, hang, error, nan, scale
    fault_seed: int = 0
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    min_replies: float = 1.0  # valid replies a round needs: share in (0, 1) or count >= 1
    round_retries: int = 2  # times a round short of min-replies asks its failed clients again
    validate_updates: bool = True  # reject malformed / non-finite / too large updates
    max_update_norm: float = 0.0  # L2 bound on a client's update (0 = off)
    byzantine_clients: int = 0  # krum, multikrum, bulyan: clients assumed malicious
    trimmed_beta: float = 0.2  # fedtrimmedavg: share cut from each end
    krum_select: int = 1  # multikrum: updates averaged
    # On-device scoring with DP global statistics (common/federation/statistics_config.py).
    statistics: bool = False  # release DP popularity + attribute transitions before training
    statistics_share: float = 1.0  # dp = user: share of target-epsilon the statistics spend
    transitions_per_user: int = 1  # a user's last transitions counted in the statistics
    scorer_window: int = 10  # recent items in a user's attribute profile
    scorer_decay: float = 0.8  # weight decay per step back in the user's history
    scorer_transition_floor: float = 1e-3
    scorer_similarity_weight: float = 2.0
    scorer_popularity_weight: float = 0.05
    scorer_model_weight: float = 0.0  # weight of the global model's scores (0 = unused)
    # train on each user's validation item too (the test stage's inputs); no valid figures
    train_through_validation: bool = False

    def __post_init__(self) -> None:
        check_field_types(self, _kebab)
        self._check_choices()
        self._check_ranges()
        self.model_config()  # validates the architecture keys
        check_data_options(self)
        check_secure_aggregation(self)
        self._check_mode()
        self._check_privacy()
        _check_paths(self)
        _check_deployment(self)
        check_resume_from(self)
        check_reliability(self)
        check_statistics(self)

    def _check_choices(self) -> None:
        """Keys that name one of a fixed set of choices."""
        choices = {
            "strategy": STRATEGIES,
            "optimizer": OPTIMIZERS,
            "partition-mode": PARTITION_MODES,
            "dp": DP_MODES,
            "update-compression": COMPRESSIONS,
        }
        for key, allowed in choices.items():
            value = getattr(self, key.replace("-", "_"))
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")

    def _check_ranges(self) -> None:
        """Numeric keys within their ranges."""
        if self.num_server_rounds < 0 or (self.num_server_rounds == 0 and not self.statistics):
            raise ValueError(
                f"num-server-rounds must be positive (0 only with statistics = true), "
                f"got {self.num_server_rounds}"
            )
        for name in ("local_epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
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
        check_seed(self.seed)

    def _check_mode(self) -> None:
        """Legal combinations of partition-mode x dp x secure-aggregation x compression.

        docs/architecture.md tabulates them; keep the two in step.
        """
        if self.dp == "user" and self.partition_mode != "cohort":
            raise ValueError(
                "dp = 'user' (user-level DP-FedAvg with Poisson-sampled users) needs "
                "partition-mode = 'cohort'"
            )
        if self.dp == "local" and self.partition_mode == "cohort":
            raise ValueError("dp = 'local' trains one DP-SGD client per Flower client: "
                             "use partition-mode cross-device or cross-silo")  # fmt: skip
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
        if self.train_through_validation and self.deployment_nodes:
            raise ValueError(
                "train-through-validation is for simulations: a deployment's nodes report "
                "validation figures, which training on the validation items would void"
            )

    def _check_privacy(self) -> None:
        """DP needs noise: a given multiplier or a target epsilon to derive it from."""
        if self.dp != "none" and self.noise_multiplier <= 0 and self.target_epsilon <= 0:
            raise ValueError(
                f"dp = {self.dp!r} needs noise-multiplier > 0 or target-epsilon > 0 "
                "(without noise nothing is private)"
            )

    def model_config(self) -> ModelConfig:
        """The architecture part of the config."""
        return ModelConfig(name=self.model, **{key: getattr(self, key) for key in MODEL_KEYS})

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
            if name not in hints or "_" in key:  # kebab-case only: one spelling per key
                raise ValueError(f"unknown run-config key {key!r}")
            values[name] = coerce_value(f"run-config key {key!r}", value, hints[name])
        return cls(**values)


def _kebab(name: str) -> str:
    """A field's run-config key."""
    return name.replace("_", "-")


def _check_paths(config: FederatedConfig) -> None:
    """A data set is named; a checkpoint to continue from and a ledger key are absolute paths."""
    if not config.dataset.strip():
        raise ValueError("dataset must name a built-in data set or a file, got ''")
    checkpoint = config.initial_checkpoint
    if checkpoint and not Path(checkpoint).is_absolute():
        raise ValueError(f"initial-checkpoint must be an absolute path, got {checkpoint!r}")
    if config.ledger_key and not Path(config.ledger_key).is_absolute():
        raise ValueError(f"ledger-key must be an absolute path, got {config.ledger_key!r}")


def _check_deployment(config: FederatedConfig) -> None:
    """A deployment's server holds no user data: the public catalogue and population size."""
    if config.population < 0:
        raise ValueError(f"population must be >= 0, got {config.population}")
    if config.deployment_nodes and not (config.catalogue and config.population):
        raise ValueError(
            "a deployment's server holds no user data: set run-config 'catalogue' (the "
            "public item list, one id per line) and 'population' (the number of users "
            "the federation protects)"
        )


def results_dir_of_run(results_dir: str, run_id: int) -> Path:
    """The run folder: ``results-dir`` (absolute), or ``$FLWR_HOME/results/run-<run id>``.

    The empty default serves plain ``flwr run .``; server and clients of one simulation
    derive the same folder from the run id, and ``$FLWR_HOME`` is Flower's own (default
    ``~/.flwr``; the Makefile sets ``<project>/.flwr``).
    """
    if not results_dir:
        return get_flwr_home() / "results" / f"run-{run_id}"
    if not Path(results_dir).is_absolute():
        raise ValueError(
            f"run-config key 'results-dir' must be an absolute folder or empty, got {results_dir!r}"
        )
    return Path(results_dir)


def config_of_run(run_config: Mapping[str, Any], run_id: int) -> FederatedConfig:
    """The checked config of a Flower run, with its run folder resolved."""
    config = FederatedConfig.from_run_config(run_config)
    folder = results_dir_of_run(config.results_dir or config.resume_from, run_id)
    return dataclasses.replace(config, results_dir=str(folder))


def check_resume_from(config: FederatedConfig) -> None:
    """``resume-from``: an absolute run folder, the run's own, on the Message API path."""
    if not config.resume_from:
        return
    if not Path(config.resume_from).is_absolute():
        raise ValueError(f"resume-from must be an absolute folder, got {config.resume_from!r}")
    if config.results_dir and Path(config.results_dir) != Path(config.resume_from):
        raise ValueError(
            f"resume-from {config.resume_from!r} must be the run's own folder, but "
            f"results-dir is {config.results_dir!r}: a resumed run continues where it left"
        )
    if config.secure_aggregation:
        raise ValueError("resume-from: runs with secure-aggregation cannot be resumed")


def check_data_options(config: FederatedConfig) -> None:
    """The data-loading keys, checked before any file is read or process started."""
    try:
        dataset_log_format(config.dataset, config.dataset_columns, config.dataset_time_unit)
    except ValueError as error:
        raise ValueError(f"dataset-columns / dataset-time-unit: {error}") from None
    check_attribute_source(config.item_attributes, config.dataset)
    if config.item_embedding != "free" and not config.item_attributes.strip():
        raise ValueError(
            f"item-embedding {config.item_embedding!r} needs item-attributes: 'builtin' "
            "(beauty, sports, toys) or a path to the public attribute file"
        )
