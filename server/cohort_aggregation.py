"""Aggregation of edge-aggregator (cohort) replies, with optional user-level DP noise.

Each cohort replies the SUM of its users' updates and a weight (:mod:`common.training.cohort`).
This wrapper adds the sums of all cohorts, adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` to the total when user-level DP is on, and divides by
the weight: the replies' total weight without DP (classic FedAvg), or the EXPECTED
number of sampled users with DP (the fixed-denominator estimator of DP-FedAvg,
McMahan et al. 2018, whose sensitivity to one user is ``clip_norm / expected``). The
noisy mean update then goes through the wrapped Flower strategy as a single reply, so
FedAvg applies it as is and FedAdam / FedYogi use it as their pseudo-gradient: the
server optimizer only ever sees the privatized aggregate. The same mechanism then draws
the round's noise witness (:meth:`~common.privacy.mechanism.GaussianMechanism.witness`),
divided by the same weight, which ``on_witness`` hands to the recorder: the released
checkpoint carries it, so anyone can measure the round's noise
(:mod:`common.privacy.release_evidence`).

Flower's own DP wrappers clip and count per Flower client; here a Flower client holds
many users, so the user-level mechanism has to act on the cohorts' clipped sums.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.federation.messages import WEIGHT_KEY
from common.privacy.mechanism import GaussianMechanism
from common.privacy.randomness import PrivacyRandomness
from server.strategy_wrapper import StrategyWrapper
from server.update_validation import reply_problem

logger = logging.getLogger("fedseqrec.server")
detail = logging.getLogger("fedseqrec.server.detail")  # per node: the run log only


class CohortAggregation(StrategyWrapper):
    """Sum cohort replies, optionally privatize, and hand the mean to ``strategy``.

    ``before_round(round)`` runs before a round is configured (it may raise to stop the
    run, e.g. a spent privacy budget); ``on_release(round)`` runs after aggregation and
    before the new global model is returned to Flower, then ``on_witness(round, values)``
    gets the round's noise witness. ``noise_source(round)`` gives the round's noise
    generator: secret by default (:mod:`common.privacy.randomness`).
    """

    def __init__(
        self,
        strategy: FedAvg,
        noise_multiplier: float = 0.0,
        clip_norm: float = 1.0,
        expected_users: float | None = None,
        noise_source: Callable[[int], PrivacyRandomness] | None = None,
        before_round: Callable[[int], None] | None = None,
        on_release: Callable[[int], object] | None = None,
        on_witness: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        super().__init__(strategy)
        if noise_multiplier < 0 or clip_norm <= 0:
            raise ValueError("noise_multiplier must be >= 0 and clip_norm > 0")
        if noise_multiplier > 0 and not expected_users:
            raise ValueError("user-level DP needs the expected number of sampled users")
        self.strategy: FedAvg = strategy
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.expected_users = expected_users
        self.noise_source = noise_source or (lambda _round: PrivacyRandomness())
        self.before_round = before_round
        self.on_release = on_release
        self.on_witness = on_witness
        self.current_arrays = ArrayRecord()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every cohort trains every round; users are sampled inside the cohorts."""
        if self.before_round is not None:
            self.before_round(server_round)
        self.current_arrays = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Noisy (or exact) mean update of all sampled users, applied by the inner strategy."""
        valid = []
        for reply in replies:
            problem = (
                reply.error.reason
                if reply.has_error()
                else reply_problem(reply, self.current_arrays, deltas=True)
            )  # the noise must be added to finite, well-formed sums even unscreened
            if problem:
                detail.warning("round %d: cohort reply dropped: %s", server_round, problem)
            else:
                valid.append(reply)
        if not valid:
            return None, None
        total, weight = self._summed_updates(valid)
        witness = None
        if self.noise_multiplier > 0:
            witness = self.privatize(server_round, total)
            weight = float(self.expected_users or 0.0)
        if weight <= 0:
            return None, None
        target = ArrayRecord(
            {
                name: Array(self.current_arrays[name].numpy() + total[name] / weight)
                for name in self.current_arrays
            }
        )
        synthetic = Message(
            content=RecordDict({"arrays": target, "metrics": MetricRecord({WEIGHT_KEY: 1.0})}),
            dst_node_id=0,
            message_type="train",
        )
        arrays, _ = self.strategy.aggregate_train(server_round, [synthetic])
        if self.on_release is not None:
            self.on_release(server_round)  # e.g. the privacy ledger, before the model leaves
        if self.on_witness is not None and witness is not None:
            self.on_witness(server_round, witness)  # released with the round's checkpoint
        metrics = self.strategy.train_metrics_aggr_fn(
            [reply.content for reply in valid], WEIGHT_KEY
        )
        return arrays, metrics

    def privatize(self, server_round: int, total: dict[str, np.ndarray]) -> np.ndarray:
        """Add the round's noise to the summed updates in place; the round's noise witness,
        divided by the expected number of users as the sum is."""
        mechanism = GaussianMechanism(
            self.noise_multiplier * self.clip_norm, self.noise_source(server_round)
        )
        for value in total.values():
            mechanism.add_to(value)
        return mechanism.witness() / np.float32(self.expected_users or 1.0)

    def _summed_updates(self, replies: list[Message]) -> tuple[dict[str, np.ndarray], float]:
        """Add the (validated) cohorts' update sums and weights."""
        total = {
            name: np.zeros_like(self.current_arrays[name].numpy()) for name in self.current_arrays
        }
        weight = 0.0
        for reply in replies:
            arrays = reply.content.array_records["arrays"]
            for name, value in total.items():
                value += arrays[name].numpy()
            weight += float(reply.content.metric_records["metrics"][WEIGHT_KEY])  # type: ignore[arg-type]
        return total, weight

    def summary(self) -> None:
        """Log the wrapped strategy and the DP settings."""
        logger.info(
            "cohort aggregation: noise multiplier %s, clip norm %s, expected users %s",
            self.noise_multiplier,
            self.clip_norm,
            self.expected_users,
        )
        self.strategy.summary()
