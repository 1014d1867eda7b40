"""A client's DP-SGD bookkeeping: accountant history in ``context.state``, budget, ledger.

The history of every release this client made (noise multiplier, sampling rate, steps)
lives in the Flower context's state, which the runtime keeps for the node across rounds,
so epsilon composes over every round the client took part in. Before a round the client
checks that one more release stays within its budget; otherwise it refuses and says so
in an error reply (the strategy skips it, the server counts it). Each release is written
to the ledger before the update leaves.

Delta, noise, the budget check and the ledger entry come from the same code the server
uses (:mod:`common.privacy.calibration`, :meth:`PrivacyLedger.record_release`). delta is
at most ``1 / (10 x users protected)``, the federation's user count, which the server
sends in the train config (``population``) or an edge node sets in its node config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message

from common.data.features import TrainingWindows
from common.data.node_data import NodeDataConfig
from common.federation.config import FederatedConfig
from common.federation.messages import POPULATION_KEY
from common.privacy.accounting import Release
from common.privacy.budget import BUDGET_EXHAUSTED, BudgetExceededError
from common.privacy.calibration import calibrate_noise, check_population, resolve_delta
from common.privacy.ledger import (
    INSECURE_REPRODUCIBLE,
    OS_ENTROPY,
    LedgerEntry,
    PrivacyBudget,
    PrivacyLedger,
)
from common.training.dp_sgd import protected_unit, sampling_rate, steps_per_epoch

STATE_KEY = "privacy-history"
EXHAUSTED_PREFIX = "privacy budget exhausted"


def load_history(context: Context, ledger: PrivacyLedger, who: str) -> list[Release]:
    """Every release this client made, from ``context.state``.

    On the client's first round of a run the state is empty: it starts from the
    client's earlier releases in its ledger, so that a node's epsilon keeps composing
    over runs (continual learning) and not only within one.
    """
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        history = ledger.releases(who)
        save_history(context, history)
        return history
    noises, rates, steps = (record[key] for key in ("noise", "rate", "steps"))
    if not (isinstance(noises, list) and isinstance(rates, list) and isinstance(steps, list)):
        raise ValueError(f"context.state[{STATE_KEY!r}] is malformed: {record!r}")
    return [
        Release(float(n), float(q), int(s))  # type: ignore[arg-type,call-overload]
        for n, q, s in zip(noises, rates, steps, strict=True)
    ]


def save_history(context: Context, history: list[Release]) -> None:
    """Persist the history into ``context.state`` (kept by Flower across rounds)."""
    context.state[STATE_KEY] = ConfigRecord(
        {
            "noise": [r.noise_multiplier for r in history],
            "rate": [r.sampling_rate for r in history],
            "steps": [r.steps for r in history],
        }
    )


@dataclass(frozen=True)
class LocalPrivacyPlan:
    """This round's DP-SGD parameters and the budget they are checked against."""

    release: Release
    delta: float
    budget: PrivacyBudget | None
    unit: str


@dataclass(frozen=True)
class ClientPrivacy:
    """Who this client is in the ledger, where its ledger is, its budget and population."""

    who: str
    ledger: Path
    budget_epsilon: float
    delta: float  # 0: 1 / (10 x population)
    population: int  # users protected: the federation's, not this node's
    run_id: str
    randomness: str = OS_ENTROPY

    @classmethod
    def from_context(
        cls,
        config: FederatedConfig,
        context: Context,
        partition_id: int,
        population: object = None,
    ) -> ClientPrivacy:
        """An edge node's keys (its own ledger and budget), else the simulation's.

        ``population`` is the server's train-config value; without it, the node
        config's ``population``.
        """
        users = check_population(_population(population, context.node_config))
        run_id = Path(config.results_dir).name or str(context.run_id)
        insecure = bool(getattr(config, "insecure_reproducible_noise", False))
        randomness = INSECURE_REPRODUCIBLE if insecure else OS_ENTROPY
        if NodeDataConfig.applies_to(context.node_config):
            node = NodeDataConfig.from_node_config(context.node_config)
            return cls(
                who=f"node-{node.data_path.stem}",
                ledger=node.ledger_path,
                budget_epsilon=node.budget_epsilon or config.budget_epsilon,
                delta=node.budget_delta or config.delta,
                population=users,
                run_id=run_id,
                randomness=randomness,
            )
        return cls(
            who=f"client-{partition_id}",
            ledger=Path(config.results_dir) / "ledger" / "clients.jsonl",
            budget_epsilon=config.budget_epsilon,
            delta=config.delta,
            population=users,
            run_id=run_id,
            randomness=randomness,
        )


def _population(sent: object, node_config: Mapping[str, Any]) -> object:
    """The users protected: the server's train config, else the node config."""
    if sent is not None:
        return sent
    if POPULATION_KEY in node_config:
        return node_config[POPULATION_KEY]
    raise ValueError(
        f"local DP needs the federation's user count for delta: the server sends "
        f"{POPULATION_KEY!r} in the train config, or set node config {POPULATION_KEY!r}"
    )


def plan_round(
    config: FederatedConfig, windows: TrainingWindows, privacy: ClientPrivacy
) -> LocalPrivacyPlan:
    """Noise (given, or derived so that every planned round fits the target) and budget.

    delta defaults to 1 / (10 x the federation's users) and may not exceed it; a sample
    is a window (or a user, see :func:`common.training.dp_sgd.protected_unit`).
    """
    delta = resolve_delta(privacy.delta, privacy.population)
    rate = sampling_rate(windows, config.batch_size)
    steps = config.local_epochs * steps_per_epoch(windows, config.batch_size)
    noise = calibrate_noise(
        config.noise_multiplier,
        config.target_epsilon,
        delta=delta,
        sampling_rate=rate,
        planned_steps=steps * config.num_server_rounds,
        mode="local",
    )
    budget_value = privacy.budget_epsilon or config.target_epsilon
    budget = PrivacyBudget(budget_value, delta) if budget_value else None
    return LocalPrivacyPlan(Release(noise, rate, steps), delta, budget, protected_unit(windows))


def refusal(msg: Message, error: BudgetExceededError) -> Message:
    """The reply of a client whose next round would exceed its budget."""
    reason = f"{EXHAUSTED_PREFIX}: {error}; one more round would exceed it"
    return Message(Error(code=BUDGET_EXHAUSTED, reason=reason), reply_to=msg)


def record(
    ledger: PrivacyLedger,
    privacy: ClientPrivacy,
    plan: LocalPrivacyPlan,
    history: list[Release],
    *,
    server_round: int,
    clip_norm: float,
) -> LedgerEntry:
    """Append this round's release (cumulative epsilon over ``history``) to the ledger."""
    return ledger.record_release(
        privacy.who,
        plan.release,
        delta=plan.delta,
        population=privacy.population,
        budget=plan.budget,
        history=history,
        randomness=privacy.randomness,
        run_id=privacy.run_id,
        round=server_round,
        unit=plan.unit,
        mechanism="dp-sgd",
        clip_norm=clip_norm,
    )
