"""A client's DP-SGD bookkeeping: accountant history in ``context.state``, budget, ledger.

The history of every release this client made (noise multiplier, sampling rate, steps)
lives in the Flower context's state, which the runtime keeps for the node across rounds,
so epsilon composes over every round the client took part in. Before a round the client
checks that one more release stays within its budget; otherwise it refuses and says so
in an error reply (the strategy skips it, the server counts it). Each release is written
to the ledger before the update leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message

from common.data.features import TrainingWindows
from common.data.node_data import NodeDataConfig
from common.federation.config import FederatedConfig
from common.privacy.accounting import Release, noise_for_target_epsilon
from common.privacy.ledger import LedgerEntry, PrivacyBudget, PrivacyLedger, epsilon_after
from common.training.dp_sgd import protected_unit, sampling_rate, steps_per_epoch

STATE_KEY = "privacy-history"
BUDGET_EXHAUSTED = 4001  # Flower error code of a refusal: this client's budget is spent
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
    """Who this client is in the ledger, where its ledger is, and its budget."""

    who: str
    ledger: Path
    budget_epsilon: float
    delta: float  # 0: 1 / (10 x this client's training windows)

    @classmethod
    def from_context(
        cls, config: FederatedConfig, context: Context, partition_id: int
    ) -> ClientPrivacy:
        """An edge node's keys (its own ledger and budget), else the simulation's."""
        if NodeDataConfig.applies_to(context.node_config):
            node = NodeDataConfig.from_node_config(context.node_config)
            return cls(
                who=f"node-{node.data_path.stem}",
                ledger=node.ledger_path,
                budget_epsilon=node.budget_epsilon or config.budget_epsilon,
                delta=node.budget_delta or config.delta,
            )
        return cls(
            who=f"client-{partition_id}",
            ledger=Path(config.results_dir) / "ledger" / "clients.jsonl",
            budget_epsilon=config.budget_epsilon,
            delta=config.delta,
        )


def plan_round(
    config: FederatedConfig, windows: TrainingWindows, privacy: ClientPrivacy
) -> LocalPrivacyPlan:
    """Noise (given, or derived so that every planned round fits the target) and budget.

    delta defaults to 1 / (10 x windows): a sample is a window (or a user, see
    :func:`common.training.dp_sgd.protected_unit`), and delta must stay well below 1 / samples.
    """
    delta = privacy.delta or 1.0 / (10 * len(windows))
    budget_epsilon = privacy.budget_epsilon
    rate = sampling_rate(windows, config.batch_size)
    steps = config.local_epochs * steps_per_epoch(windows, config.batch_size)
    noise = config.noise_multiplier
    if noise == 0:
        if config.target_epsilon <= 0:
            raise ValueError("dp = 'local' needs noise-multiplier > 0 or target-epsilon > 0")
        noise = noise_for_target_epsilon(
            config.target_epsilon, delta, rate, steps * config.num_server_rounds
        )
    budget_value = budget_epsilon or config.target_epsilon
    budget = PrivacyBudget(budget_value, delta) if budget_value else None
    return LocalPrivacyPlan(Release(noise, rate, steps), delta, budget, protected_unit(windows))


def refusal(msg: Message, who: str, spent: float, budget: PrivacyBudget) -> Message:
    """The reply of a client whose next round would exceed its budget."""
    reason = (
        f"{EXHAUSTED_PREFIX}: {who} has spent epsilon {spent:.4g} of {budget.epsilon:g} "
        f"(delta {budget.delta:g}); one more round would exceed it"
    )
    return Message(Error(code=BUDGET_EXHAUSTED, reason=reason), reply_to=msg)


def record(
    ledger: PrivacyLedger,
    plan: LocalPrivacyPlan,
    history: list[Release],
    *,
    who: str,
    run_id: str,
    server_round: int,
    clip_norm: float,
) -> LedgerEntry:
    """Append this round's release (cumulative epsilon over ``history``) to the ledger."""
    import time

    entry = LedgerEntry(
        run_id=run_id,
        round=server_round,
        who=who,
        unit=plan.unit,
        mechanism="dp-sgd",
        noise_multiplier=plan.release.noise_multiplier,
        sampling_rate=plan.release.sampling_rate,
        steps=plan.release.steps,
        delta=plan.delta,
        epsilon=epsilon_after(history, plan.release, plan.delta),
        accountant="rdp",
        clip_norm=clip_norm,
        budget_epsilon=plan.budget.epsilon if plan.budget else None,
        time=time.time(),
    )
    ledger.append(entry)
    return entry
