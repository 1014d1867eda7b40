"""Flower ClientApp: trains on, and evaluates, only this node's users.

In a simulation a node is a partition of the run's data set (node config
``partition-id``/``num-partitions``); on an edge node it is the node's own click log
(node config ``data-path``, see :mod:`common.data.node_data`), mapped onto the item
catalogue the server sends with every message.

Modes of :func:`train`, one named function each (docs/architecture.md has the table):

- ``secure-aggregation = true``: :data:`client.secure_client.secure_client_app` (SecAgg+);
- ``partition-mode = "cohort"``: :func:`_train_cohort` (the sum of its users' updates);
- ``dp = "local"``: :func:`_train_private` (DP-SGD within this client's budget);
- otherwise: :func:`_train_plain` (local epochs, the new weights).

An edge node with a ``receipt-key`` keeps a signed receipt of every training and
evaluation message before it answers (:mod:`client.receipts`).

:func:`query` answers the server's statistics query (``statistics = true``) with the
summed contributions of this node's users (:mod:`client.statistics_reply`); an
evaluation message carrying the released statistics is scored with the on-device
scorer (:mod:`client.node_scoring`).
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.fault_injection import corrupt_reply, fail_before_training, fault_of
from client.local_privacy import (
    ClientPrivacy,
    load_history,
    plan_round,
    record,
    refusal,
    save_history,
)
from client.node_scoring import evaluation_scorer, public_attribute_lists
from client.receipts import keep_receipt
from client.secure_client import secure_client_app, uses_secure_aggregation
from client.statistics_reply import statistics_reply
from common.data.catalogue import ItemCatalogue
from common.data.node_data import NodeDataConfig, load_node_partition
from common.data.partitioning import ClientPartition, load_split
from common.federation.app_logging import configure_app_logging
from common.federation.compression import encode_update
from common.federation.config import FederatedConfig, config_of_run
from common.federation.messages import (
    ARRAYS,
    CLIPPED,
    CONFIG,
    EPSILON,
    METRICS,
    NON_FINITE,
    POPULATION_KEY,
    PROXIMAL_MU,
    ROUND_ATTEMPT,
    ROUND_OFFSET,
    SERVER_ROUND,
    STAGE,
    TRAIN_LOSS,
    UPDATE_BYTES_KEY,
    USERS,
    VALID_STAGE,
    WEIGHT_KEY,
    load_arrays,
    model_to_arrays,
)
from common.federation.metrics import evaluation_sums
from common.federation.node_partition import client_partition, data_source
from common.federation.run_model import run_model
from common.models import SequenceRecommender
from common.privacy.ledger import BudgetExceededError, PrivacyLedger, check_budget
from common.privacy.randomness import privacy_randomness
from common.training.cohort import train_cohort
from common.training.dp_sgd import train_local_dp
from common.training.local import round_seed, train_local

app = ClientApp()


def _prepare(
    msg: Message, context: Context
) -> tuple[FederatedConfig, ClientPartition, SequenceRecommender]:
    """Config, this node's partition, and the model holding the server's arrays."""
    config = config_of_run(context.run_config, context.run_id)
    torch.set_num_threads(config.client_threads)
    partition = _partition(config, msg, context)
    node_data = NodeDataConfig.applies_to(context.node_config)  # catalogue: the message's
    item_ids = ItemCatalogue.from_config(_settings(msg)).item_ids if node_data else None
    model = run_model(config, partition.split.n_items, item_ids)
    arrays = msg.content.array_records.get(ARRAYS)
    if not isinstance(arrays, ArrayRecord):
        raise ValueError(f"the server message carries no ArrayRecord under {ARRAYS!r}")
    load_arrays(model, arrays)
    return config, partition, model


def _partition(config: FederatedConfig, msg: Message, context: Context) -> ClientPartition:
    """The edge node's own click log (node config ``data-path``), else a simulation partition."""
    if not NodeDataConfig.applies_to(context.node_config):
        return client_partition(config, context.node_config)
    configure_app_logging(logging.getLogger("fedseqrec.node"))
    settings = NodeDataConfig.from_node_config(context.node_config)
    catalogue = ItemCatalogue.from_config(_settings(msg))
    return load_node_partition(settings, catalogue, context.node_id)


def _settings(msg: Message) -> ConfigRecord:
    """The strategy's ConfigRecord (server round, FedProx mu, stage); empty if absent."""
    return msg.content.config_records.get(CONFIG) or ConfigRecord()


def _reply(msg: Message, arrays: ArrayRecord, metrics: MetricRecord) -> Message:
    """A train reply: the arrays and the metrics under the keys the server reads."""
    return Message(content=RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train in the run's mode (module docstring) and reply the update and its metrics."""
    if uses_secure_aggregation(context):  # SecAgg+ stages, legacy messages
        return secure_client_app(msg, context)
    keep_receipt(msg, context)  # an edge node's signed record of what the server sent
    config, partition, model = _prepare(msg, context)
    settings = _settings(msg)
    server_round = int(settings.get(SERVER_ROUND, 0))  # type: ignore[arg-type]
    server_round += int(settings.get(ROUND_OFFSET, 0))  # type: ignore[arg-type]
    attempt = int(settings.get(ROUND_ATTEMPT, 1))  # type: ignore[arg-type]  # 2..: a retry
    fault = fault_of(config, server_round, context.node_config, attempt)  # simulations only
    fail_before_training(fault, config, server_round)
    sent = msg.content.array_records[ARRAYS]
    if config.partition_mode == "cohort":
        reply = _train_cohort(msg, config, partition, model, server_round)
    elif config.dp == "local":
        reply = _train_private(msg, context, config, partition, model, server_round)
    else:
        reply = _train_plain(msg, config, partition, model, server_round)
    return corrupt_reply(fault, reply, sent, deltas=config.partition_mode == "cohort")


def _train_plain(
    msg: Message,
    config: FederatedConfig,
    partition: ClientPartition,
    model: SequenceRecommender,
    server_round: int,
) -> Message:
    """Local epochs on this node's windows; reply the new arrays, loss and example count."""
    proximal_mu = float(_settings(msg).get(PROXIMAL_MU, 0.0))  # type: ignore[arg-type]
    windows = partition.training_windows(
        config.max_len, config.n_gap_buckets, config.train_through_validation
    )
    seed = round_seed(config.seed, server_round, _seed_identity(config, partition))
    loss, examples = train_local(model, windows, config, seed, proximal_mu)
    sent = encode_update(
        model_to_arrays(model), msg.content.array_records[ARRAYS], config.update_compression
    )
    metrics = MetricRecord(
        {TRAIN_LOSS: loss, WEIGHT_KEY: examples, UPDATE_BYTES_KEY: sent.count_bytes()}
    )
    return _reply(msg, sent, metrics)


def _seed_identity(config: FederatedConfig, partition: ClientPartition) -> int:
    """A user's own seed stream in cross-device mode (as in cohorts), else the partition's."""
    if config.partition_mode == "cross-device":
        return int(partition.users[0])
    return partition.partition_id


def _train_private(
    msg: Message,
    context: Context,
    config: FederatedConfig,
    partition: ClientPartition,
    model: SequenceRecommender,
    server_round: int,
) -> Message:
    """DP-SGD with this client's accountant history; refuse when the budget is spent."""
    windows = partition.training_windows(
        config.max_len, config.n_gap_buckets, config.train_through_validation
    )
    population = _settings(msg).get(POPULATION_KEY)  # users protected, for the delta rule
    privacy = ClientPrivacy.from_context(config, context, partition.partition_id, population)
    plan = plan_round(config, windows, privacy)
    ledger = PrivacyLedger(privacy.ledger)
    history = load_history(context, ledger, privacy.who)
    who = privacy.who
    try:
        check_budget(who, history, plan.release, plan.delta, plan.budget)
    except BudgetExceededError as error:
        return refusal(msg, error)
    seed = round_seed(config.seed, server_round, _seed_identity(config, partition))
    randomness = privacy_randomness(config.insecure_reproducible_noise, seed, 0x0DB)
    _, release = train_local_dp(
        model, windows, epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr,
        optimizer_name=config.optimizer, noise_multiplier=plan.release.noise_multiplier,
        clip_norm=config.clip_norm, seed=seed, randomness=randomness,
    )  # fmt: skip
    if (release.sampling_rate, release.steps) != (plan.release.sampling_rate, plan.release.steps):
        raise RuntimeError(f"{who}: trained {release}, but planned {plan.release}")
    entry = record(ledger, privacy, plan, history, server_round=server_round,
                   clip_norm=config.clip_norm)  # fmt: skip
    save_history(context, [*history, plan.release])
    sent = encode_update(
        model_to_arrays(model), msg.content.array_records[ARRAYS], config.update_compression
    )
    # no exact loss or example count leaves a local-DP client: every update weighs 1
    metrics = MetricRecord(
        {
            WEIGHT_KEY: 1,
            EPSILON: entry.epsilon,
            UPDATE_BYTES_KEY: sent.count_bytes(),
        }
    )
    return _reply(msg, sent, metrics)


def _train_cohort(
    msg: Message,
    config: FederatedConfig,
    partition: ClientPartition,
    model: SequenceRecommender,
    server_round: int,
) -> Message:
    """Edge aggregator: reply the sum of this cohort's sampled users' updates.

    The users sampling is drawn over is the population the server sends (an edge node
    has no copy of the data set); a message without it falls back to the data set's.
    """
    population = _settings(msg).get(POPULATION_KEY)
    if isinstance(population, int) and population > 0:
        n_users = max(population, len(partition.users))  # a node's users are numbered 0..
    else:
        n_users = load_split(*data_source(config)).n_users
    update = train_cohort(model, partition, config, server_round, n_users)
    metrics = MetricRecord(
        {
            TRAIN_LOSS: update.loss,
            WEIGHT_KEY: update.weight,
            USERS: update.users,
            CLIPPED: update.clipped,
            NON_FINITE: update.non_finite,
        }
    )
    arrays = ArrayRecord({name: Array(value) for name, value in update.delta_sum.items()})
    return _reply(msg, arrays, metrics)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server's statistics query: the summed contributions of this node's users."""
    config = config_of_run(context.run_config, context.run_id)
    settings = _settings(msg)
    partition = _partition(config, msg, context)
    attributes = public_attribute_lists(config, context.node_config, settings)
    return statistics_reply(msg, config, partition, settings, attributes)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts on this node's users, for exact aggregation on the server.

    A message carrying released DP statistics is scored with the on-device scorer
    (:mod:`client.node_scoring`), the model's scores weighed in by its settings.
    """
    keep_receipt(msg, context)
    config, partition, model = _prepare(msg, context)
    settings = _settings(msg)
    stage = str(settings.get(STAGE, VALID_STAGE))
    scorer = evaluation_scorer(msg.content, config, context.node_config, settings)
    sums = evaluation_sums(model, partition.split, stage, config, scorer)
    return Message(content=RecordDict({METRICS: MetricRecord(sums)}), reply_to=msg)  # type: ignore[arg-type]
