"""Server side of secure aggregation: Flower's legacy DefaultWorkflow with SecAgg+.

In flwr 1.41 SecAgg+ exists only as a legacy fit workflow (``SecAggPlusWorkflow``
inside ``DefaultWorkflow``), driving a legacy strategy. The strategy here is Flower's
legacy FedAvg, wired to the same :class:`~server.run_recorder.RunRecorder` hooks as the
Message API path: the recorder evaluates, checkpoints and logs every round, so the run
folder looks the same with secure aggregation on.

What the server sees: the unmasked *sum* of the clients' quantized, example-weighted
parameters, from which SecAgg+ computes their weighted mean; per client, only the
metadata of Flower's legacy fit reply (its example count and train loss).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
from flwr.app import Context, MetricRecord, RecordDict
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common.federation.config import FederatedConfig
from common.federation.messages import (
    METRICS,
    PROXIMAL_MU,
    SERVER_ROUND,
    STAGE,
    TRAIN_STAGE,
    WEIGHT_KEY,
)
from common.federation.secure_aggregation import (
    MODULUS_RANGE,
    arrays_from_ndarrays,
    check_round_size,
    model_ndarrays,
    share_setting,
)
from server.run_recorder import RunRecorder

logger = logging.getLogger("fedseqrec.server")

Metrics = dict[str, Scalar]


class SecureAggregationError(RuntimeError):
    """A client failed during SecAgg+; the round cannot be the FedAvg of its sample."""


class StrictSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that stops the run when a client fails.

    Flower's workflow treats a failed client as a dropout and, below the
    reconstruction threshold, skips the round without a word. In a simulation a
    failure is an error (say, an update beyond the clipping range): report it.
    """

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Keys from every sampled client, or an error."""
        return _no_failures(super().setup_stage(grid, context, state), state, "setup")

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Encrypted key shares from every client, or an error."""
        return _no_failures(super().share_keys_stage(grid, context, state), state, "share keys")

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        """Masked updates from every client, or an error."""
        proceed = super().collect_masked_vectors_stage(grid, context, state)
        return _no_failures(proceed, state, "collect masked vectors")

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """The unmasked sum, or an error."""
        return _no_failures(super().unmask_stage(grid, context, state), state, "unmask")


def _no_failures(proceed: bool, state: WorkflowState, stage: str) -> bool:
    """Raise on the first client failure or on a halted protocol."""
    if state.failures:
        failed = len(state.sampled_node_ids - state.active_node_ids)
        raise SecureAggregationError(
            f"secure aggregation, stage {stage}: {failed} of {len(state.sampled_node_ids)} "
            f"clients failed; first: {client_reason(state.failures[0])}"
        )
    if not proceed:
        raise SecureAggregationError(f"secure aggregation halted in stage {stage} (see log)")
    return proceed


def client_reason(failure: BaseException) -> str:
    """The client's own message inside Flower's error wrapper (Ray traceback and all)."""
    text = str(failure)
    found = re.search(r"occurred\. Message: (.+?)(?:\\'>|'>|\\n|\n|$)", text)
    return found.group(1).strip() if found else text


def build_workflow(config: FederatedConfig) -> DefaultWorkflow:
    """The legacy default workflow with SecAgg+ as its fit step, from the run config."""
    fit_workflow = StrictSecAggPlusWorkflow(
        num_shares=share_setting(config.secagg_num_shares, "secagg-num-shares"),
        reconstruction_threshold=share_setting(
            config.secagg_reconstruction_threshold, "secagg-reconstruction-threshold"
        ),
        max_weight=config.secagg_max_weight,
        clipping_range=config.secagg_clipping_range,
        quantization_range=config.secagg_quantization_range,
        modulus_range=MODULUS_RANGE,
    )
    return DefaultWorkflow(fit_workflow=fit_workflow)


def build_legacy_strategy(
    config: FederatedConfig, num_partitions: int, recorder: RunRecorder
) -> LegacyFedAvg:
    """Flower's legacy FedAvg over the SecAgg+ mean, reporting to ``recorder``."""

    def fit_config(server_round: int) -> Metrics:
        mu = config.proximal_mu if config.strategy == "fedprox" else 0.0
        return {SERVER_ROUND: server_round, PROXIMAL_MU: mu, STAGE: TRAIN_STAGE}

    return LegacyFedAvg(
        fraction_fit=config.fraction_train,
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_evaluate_clients=0,
        min_available_clients=num_partitions,
        evaluate_fn=_evaluate_fn(recorder),
        on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters(model_ndarrays(recorder.model)),
        fit_metrics_aggregation_fn=_fit_metrics_fn(recorder),
    )


def _evaluate_fn(
    recorder: RunRecorder,
) -> Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, Metrics] | None]:
    """The recorder's ``evaluate`` hook in the legacy ``evaluate_fn`` shape."""

    def evaluate(
        server_round: int, ndarrays: list[np.ndarray], _: dict[str, Scalar]
    ) -> tuple[float, Metrics] | None:
        arrays = arrays_from_ndarrays(recorder.model, ndarrays)
        metrics = recorder.evaluate(server_round, arrays)
        # The legacy history wants a loss; this run has no server-side loss.
        return None if metrics is None else (float("nan"), _scalars(metrics))

    return evaluate


def _fit_metrics_fn(
    recorder: RunRecorder,
) -> Callable[[list[tuple[int, Metrics]]], Metrics]:
    """The recorder's ``aggregate_train`` hook in the legacy metrics-aggregation shape."""

    def aggregate(replies: list[tuple[int, Metrics]]) -> Metrics:
        records = [
            RecordDict({METRICS: MetricRecord({**metrics, WEIGHT_KEY: examples})})  # type: ignore[dict-item]
            for examples, metrics in replies
        ]
        return _scalars(recorder.aggregate_train(records, WEIGHT_KEY))

    return aggregate


def _scalars(record: MetricRecord) -> Metrics:
    """A MetricRecord of scalars as the legacy API's metrics dict."""
    return {key: value for key, value in record.items() if isinstance(value, int | float)}


def run_secure_aggregation(
    grid: Grid,
    context: Context,
    config: FederatedConfig,
    recorder: RunRecorder,
    num_partitions: int,
) -> None:
    """Run every round with SecAgg+; the recorder sees the same hooks as on plain FedAvg."""
    check_round_size(recorder.expected_clients, config)
    logger.info(
        "secure aggregation (SecAgg+): shares %g, threshold %g, clipping range %g, "
        "%d levels, max weight %g",
        config.secagg_num_shares,
        config.secagg_reconstruction_threshold,
        config.secagg_clipping_range,
        config.secagg_quantization_range,
        config.secagg_max_weight,
    )
    strategy = build_legacy_strategy(config, num_partitions, recorder)
    legacy_context = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.num_server_rounds),
        strategy=strategy,
    )
    build_workflow(config)(grid, legacy_context)
