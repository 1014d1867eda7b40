"""Flower ClientApp: trains on, and evaluates, only this node's users."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.compression import UPDATE_BYTES_KEY, encode_update
from common.federated import (
    WEIGHT_KEY,
    FederatedConfig,
    client_partition,
    evaluation_sums,
    load_arrays,
    model_to_arrays,
    round_seed,
    train_local,
)
from common.models import SequenceRecommender, build_model
from common.partitioning import ClientPartition

app = ClientApp()


def _prepare(
    msg: Message, context: Context
) -> tuple[FederatedConfig, ClientPartition, SequenceRecommender]:
    """Config, this node's partition, and the model holding the server's arrays."""
    config = FederatedConfig.from_run_config(context.run_config)
    torch.set_num_threads(config.client_threads)
    partition = client_partition(config, context.node_config)
    model = build_model(config.model_config(), partition.split.n_items)
    arrays = msg.content.array_records.get("arrays")
    if not isinstance(arrays, ArrayRecord):
        raise ValueError("the server message carries no ArrayRecord under 'arrays'")
    load_arrays(model, arrays)
    return config, partition, model


def _settings(msg: Message) -> ConfigRecord:
    """The strategy's ConfigRecord (server round, FedProx mu, stage); empty if absent."""
    return msg.content.config_records.get("config") or ConfigRecord()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs on this node's windows; reply the (compressed) arrays, loss, examples."""
    config, partition, model = _prepare(msg, context)
    settings = _settings(msg)
    server_round = int(settings.get("server-round", 0))  # type: ignore[arg-type]
    server_round += int(settings.get("round-offset", 0))  # type: ignore[arg-type]
    proximal_mu = float(settings.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    windows = partition.training_windows(config.max_len, config.n_gap_buckets)
    seed = round_seed(config.seed, server_round, partition.partition_id)
    loss, examples = train_local(model, windows, config, seed, proximal_mu)
    sent = encode_update(
        model_to_arrays(model), msg.content.array_records["arrays"], config.update_compression
    )
    metrics = MetricRecord(
        {"train_loss": loss, WEIGHT_KEY: examples, UPDATE_BYTES_KEY: sent.count_bytes()}
    )
    content = RecordDict({"arrays": sent, "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metric sums and counts on this node's users, for exact aggregation on the server."""
    config, partition, model = _prepare(msg, context)
    stage = str(_settings(msg).get("stage", "valid"))
    sums = evaluation_sums(model, partition.split, stage, config)
    return Message(content=RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)  # type: ignore[arg-type]
