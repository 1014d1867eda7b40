"""The server's side of user-level DP-FedAvg: noise calibration, budget, ledger.

Mechanism (:class:`server.cohort_aggregation.CohortAggregation`): every user is sampled
with probability ``q`` per round (Poisson), its update is clipped to ``clip_norm``, and
the server adds Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` to
the sum before dividing by the expected number of users. One round is therefore one
subsampled Gaussian mechanism on users (add/remove one user's whole data), accounted as
``Release(noise_multiplier, q, steps=1)`` and composed over rounds.

The noise multiplier is either given or derived so that all planned rounds fit the
target epsilon. Before each round the server checks that one more release stays within
the budget and stops the run otherwise; each release is written to the run's ledger
(``<results>/ledger/server.jsonl``) before the privatized model leaves the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.federation.config import FederatedConfig
from common.privacy.accounting import Release, noise_for_target_epsilon
from common.privacy.ledger import PrivacyBudget, PrivacyLedger, would_exceed

logger = logging.getLogger("fedseqrec.server")
SERVER = "server"


class PrivacyBudgetSpent(RuntimeError):
    """The next round would exceed the run's privacy budget: the run stops before it."""


def default_delta(n_users: int) -> float:
    """delta = 1 / (10 n): well below 1 / n, the level at which one user may leak."""
    return 1.0 / (10 * n_users)


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

    @classmethod
    def from_config(
        cls, config: FederatedConfig, n_users: int, results_dir: Path
    ) -> UserLevelPrivacy:
        """Resolve delta, noise and budget from the run config."""
        delta = config.delta or default_delta(n_users)
        if delta >= 1.0 / n_users:
            raise ValueError(f"delta {delta:g} must be below 1 / number of users ({1 / n_users:g})")
        rate = config.fraction_train
        noise = config.noise_multiplier
        if noise == 0:
            if config.target_epsilon <= 0:
                raise ValueError("dp = 'user' needs noise-multiplier > 0 or target-epsilon > 0")
            noise = noise_for_target_epsilon(
                config.target_epsilon, delta, rate, config.num_server_rounds
            )
        budget = PrivacyBudget(config.target_epsilon, delta) if config.target_epsilon else None
        ledger = PrivacyLedger(results_dir / "ledger" / f"{SERVER}.jsonl")
        privacy = cls(results_dir.name, noise, config.clip_norm, rate, delta, budget, ledger)
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

    def check_round(self, server_round: int) -> None:
        """Stop before a round whose release would exceed the budget."""
        if self.budget and would_exceed(self.budget, self.ledger.releases(SERVER), self.release):
            raise PrivacyBudgetSpent(
                f"round {server_round} would exceed the privacy budget "
                f"(epsilon {self.budget.epsilon:g}, delta {self.budget.delta:g})"
            )

    def record_round(self, server_round: int) -> float:
        """Append this round's release to the ledger (before the model leaves); epsilon."""
        entry = self.ledger.record_release(
            SERVER,
            self.release,
            delta=self.delta,
            budget=self.budget,
            run_id=self.run_id,
            round=server_round,
            unit="user",
            mechanism="dp-fedavg",
            clip_norm=self.clip_norm,
        )
        return entry.epsilon

    def spent(self) -> float:
        """Epsilon after every recorded round (0 before the first)."""
        entries = [entry for entry in self.ledger.entries() if entry.who == SERVER]
        return entries[-1].epsilon if entries else 0.0

    def summary(self) -> dict[str, object]:
        """What summary.json says about the guarantee (the audit recomputes it)."""
        return {
            "mechanism": "dp-fedavg",
            "unit": "user",
            "neighbouring": "add or remove one user's whole interaction history",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "epsilon": self.spent(),
            "rounds_accounted": len(self.ledger.releases(SERVER)),
            "budget_epsilon": self.budget.epsilon if self.budget else None,
            "accountant": "rdp (opacus)",
            "ledger": str(self.ledger.path),
        }
