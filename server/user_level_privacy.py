"""The server's side of user-level DP-FedAvg: noise calibration, budget, ledger.

Mechanism (:class:`server.cohort_aggregation.CohortAggregation`): every user is sampled
with probability ``q`` per round (Poisson), its update is clipped to ``clip_norm``, and
the server adds Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` to
the sum before dividing by the expected number of users. One round is therefore one
subsampled Gaussian mechanism on users (add/remove one user's whole data), accounted as
``Release(noise_multiplier, q, steps=1)`` and composed over rounds.

Delta and the noise multiplier come from :mod:`common.privacy.calibration` (delta at most
``1 / (10 x users)``), the budget check and the ledger entry from
:mod:`common.privacy.ledger`, the same code a node's DP-SGD uses. Before each round the
server checks that one more release stays within the budget and stops the run
otherwise; each release is written to the run's ledger (``<results>/ledger/server.jsonl``)
before the privatized model leaves the server. A run continued from a checkpoint starts
that ledger with the earlier run's entries (:func:`carry_ledger_forward`), so its epsilon
and budget cover every run of the model.

A run with ``statistics = true`` first records its DP global statistics as one more
user-level Gaussian release of the server (mechanism ``dp-statistics``, sampling rate 1,
:mod:`server.statistics_release`); the training rounds' noise is calibrated so that both
compose within ``target-epsilon``
(:func:`common.privacy.budget_split.user_level_noise`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.federation.config import FederatedConfig
from common.federation.messages import (
    DP_CLIP_NORM,
    DP_MECHANISM,
    DP_NOISE_MULTIPLIER,
    DP_SAMPLING_RATE,
    LEDGER_PUBLIC_KEY,
)
from common.privacy.accounting import Release
from common.privacy.budget_split import user_level_noise
from common.privacy.calibration import resolve_delta
from common.privacy.ledger import (
    INSECURE_REPRODUCIBLE,
    OS_ENTROPY,
    BudgetExceededError,
    PrivacyBudget,
    PrivacyLedger,
    check_budget,
)
from common.privacy.ledger_heads import (
    LEDGER_FOLDER,
    SERVER_LEDGER,
    carry_forward,
    write_started_from,
)
from common.privacy.signing import Signer
from common.privacy.statistics import (
    CONTRIBUTION_BOUND,
    STATISTICS_MECHANISM,
    joint_noise_multiplier,
)

logger = logging.getLogger("fedseqrec.server")
SERVER = "server"


class PrivacyBudgetSpent(BudgetExceededError):
    """The next round would exceed the run's privacy budget: the run stops before it."""


@dataclass
class UserLevelPrivacy:
    """Calibrated parameters plus the ledger of a user-level DP run."""

    run_id: str
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    delta: float
    budget: PrivacyBudget | None
    ledger: PrivacyLedger
    population: int
    randomness: str = OS_ENTROPY
    round_offset: int = 0  # a continued run's rounds are numbered after its checkpoint's
    statistics_multipliers: dict[str, float] = field(default_factory=dict)  # none: {}

    @classmethod
    def from_config(
        cls,
        config: FederatedConfig,
        n_users: int,
        results_dir: Path,
        *,
        insecure_reproducible_noise: bool | None = None,
        round_offset: int = 0,
    ) -> UserLevelPrivacy:
        """Resolve delta, noise and budget from the run config.

        ``insecure_reproducible_noise`` (default: the run config's
        ``insecure-reproducible-noise``) marks every release as not private in the ledger;
        ``round_offset`` is the round of the checkpoint a continued run started from.
        """
        delta = resolve_delta(config.delta, n_users)
        rate = config.fraction_train
        noise, statistics = user_level_noise(config, delta)
        budget = PrivacyBudget(config.target_epsilon, delta) if config.target_epsilon else None
        signer = Signer.from_file(Path(config.ledger_key)) if config.ledger_key else None
        ledger = PrivacyLedger(results_dir / LEDGER_FOLDER / SERVER_LEDGER, signer)
        if insecure_reproducible_noise is None:  # the key lands with the secure-noise work
            insecure_reproducible_noise = bool(
                getattr(config, "insecure_reproducible_noise", False)
            )
        randomness = INSECURE_REPRODUCIBLE if insecure_reproducible_noise else OS_ENTROPY
        privacy = cls(
            results_dir.name, noise, config.clip_norm, rate, delta, budget, ledger, n_users,
            randomness, round_offset, statistics,
        )  # fmt: skip
        logger.info(
            "user-level DP: noise multiplier %.4f, clip %g, q %.5f, delta %.3g, budget %s",
            noise,
            config.clip_norm,
            rate,
            delta,
            f"epsilon {budget.epsilon:g}" if budget else "none",
        )
        return privacy

    @property
    def release(self) -> Release:
        """What one round releases."""
        return Release(self.noise_multiplier, self.sampling_rate, 1)

    def announcement(self) -> dict[str, str | float]:
        """What each training message tells the nodes, whose receipts record it.

        The round's mechanism and parameters, and the public key that signs the ledger
        (:mod:`common.privacy.node_receipts`); the audit checks the ledger against them.
        """
        announced: dict[str, str | float] = {
            DP_MECHANISM: "dp-fedavg",
            DP_NOISE_MULTIPLIER: self.noise_multiplier,
            DP_CLIP_NORM: self.clip_norm,
            DP_SAMPLING_RATE: self.sampling_rate,
        }
        if self.ledger.signer is not None:
            announced[LEDGER_PUBLIC_KEY] = self.ledger.signer.public_text
        return announced

    def check_round(self, server_round: int) -> None:
        """Stop before a round whose release would exceed the budget."""
        history = self.ledger.releases(SERVER)
        try:
            check_budget(SERVER, history, self.release, self.delta, self.budget)
        except BudgetExceededError as error:
            raise PrivacyBudgetSpent(
                f"round {self.round_offset + server_round} would exceed the privacy budget: {error}"
            ) from None

    def record_round(self, server_round: int) -> float:
        """Append this round's release to the ledger (before the model leaves); epsilon."""
        entry = self.ledger.record_release(
            SERVER,
            self.release,
            delta=self.delta,
            population=self.population,
            budget=self.budget,
            randomness=self.randomness,
            run_id=self.run_id,
            round=self.round_offset + server_round,
            unit="user",
            mechanism="dp-fedavg",
            clip_norm=self.clip_norm,
        )
        return entry.epsilon

    def record_statistics(self, numbered_round: int) -> float:
        """Append the statistics release to the ledger (before it leaves); epsilon."""
        entry = self.ledger.record_release(
            SERVER,
            Release(joint_noise_multiplier(self.statistics_multipliers), 1.0, 1),
            delta=self.delta,
            population=self.population,
            budget=self.budget,
            randomness=self.randomness,
            run_id=self.run_id,
            round=numbered_round,
            unit="user",
            mechanism=STATISTICS_MECHANISM,
            clip_norm=CONTRIBUTION_BOUND,
        )
        return entry.epsilon

    def statistics_recorded(self) -> bool:
        """Whether this run's ledger already holds its statistics release (a resumed run)."""
        return any(
            entry.who == SERVER
            and entry.run_id == self.run_id
            and entry.mechanism == STATISTICS_MECHANISM
            for entry in self.ledger.entries()
        )

    def spent(self) -> float:
        """Epsilon after every recorded round (0 before the first)."""
        entries = [entry for entry in self.ledger.entries() if entry.who == SERVER]
        return entries[-1].epsilon if entries else 0.0

    def summary(self) -> dict[str, object]:
        """What summary.json says about the guarantee (the audit recomputes it)."""
        mechanisms = [STATISTICS_MECHANISM] if self.statistics_multipliers else []
        mechanisms += ["dp-fedavg"] if self.noise_multiplier > 0 else []
        return {
            "mechanism": " + ".join(mechanisms),
            "unit": "user",
            "neighbouring": "add or remove one user's whole interaction history",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "population": self.population,
            "randomness": self.randomness,
            "epsilon": self.spent(),
            "releases_accounted": len(self.ledger.releases(SERVER)),  # statistics included
            "statistics": (
                {
                    "mechanism": STATISTICS_MECHANISM,
                    "noise_multipliers": self.statistics_multipliers,
                    "joint_noise_multiplier": joint_noise_multiplier(self.statistics_multipliers),
                    "contribution_bound": CONTRIBUTION_BOUND,
                    "sampling_rate": 1.0,
                }
                if self.statistics_multipliers
                else None
            ),
            "budget_epsilon": self.budget.epsilon if self.budget else None,
            "accountant": "pld (dp_accounting)",
            "ledger": str(self.ledger.path),
        }


def carry_ledger_forward(
    checkpoint: Path, recorded_heads: Mapping[str, Any], results_dir: Path
) -> dict[str, Any] | None:
    """Start this run's server ledger with the one ``checkpoint``'s run released under.

    The earlier run's ledger is read from ``<checkpoint folder>/ledger/server.jsonl``; a
    checkpoint that recorded server releases without that ledger beside it is refused
    (its epsilon would silently restart at 0). Returns the started-from record, which
    is also written to ``ledger/started-from.json``; None when there is nothing to carry.
    """
    source = checkpoint.parent / LEDGER_FOLDER / SERVER_LEDGER
    recorded = recorded_heads.get(SERVER_LEDGER)
    if not source.is_file():
        if recorded and recorded.get("entries"):
            raise ValueError(
                f"initial-checkpoint {checkpoint}: released after {recorded['entries']} "
                f"server ledger entries, but {source} is missing; copy the earlier run's "
                f"ledger folder beside the checkpoint so its privacy spend carries forward"
            )
        return None
    folder = results_dir / LEDGER_FOLDER
    record = {
        "checkpoint": str(checkpoint),
        **carry_forward(source, folder / SERVER_LEDGER, recorded),
    }
    write_started_from(folder, record)
    logger.info("server ledger continues %s: %d entries", source, record["entries"])
    return record
