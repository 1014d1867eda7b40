"""Privacy budgets: the one check every party runs before a release, and its refusal code.

A party (the server, a node) may have a budget (epsilon, delta) over all its releases;
:func:`check_budget` is the only place that decides whether one more release fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from common.privacy.accounting import ACCOUNTANT, Release, composed_epsilon, number_or_nan

BUDGET_EXHAUSTED = 4001  # Flower error code of a refusal: this client's budget is spent


class BudgetExceededError(RuntimeError):
    """A release was refused because it would take its party past its budget."""


@dataclass(frozen=True)
class PrivacyBudget:
    """The most a party may spend: (epsilon, delta)-DP over all its releases."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not 0 < number_or_nan(self.epsilon) < math.inf:
            raise ValueError(f"budget epsilon must be a positive number, got {self.epsilon!r}")
        if not 0.0 < number_or_nan(self.delta) < 1.0:
            raise ValueError(f"budget delta must be in (0, 1), got {self.delta!r}")


def epsilon_after(history: Sequence[Release], next_release: Release, delta: float) -> float:
    """Cumulative epsilon if ``next_release`` followed ``history``, by :data:`ACCOUNTANT`
    (PLD: the accountant that calibrated the noise, so calibrated noise always fits)."""
    return composed_epsilon([*history, next_release], delta, ACCOUNTANT)


def check_budget(
    who: str,
    history: Sequence[Release],
    next_release: Release,
    delta: float,
    budget: PrivacyBudget | None,
) -> float:
    """The one budget check: epsilon after ``next_release``, or :class:`BudgetExceededError`."""
    if budget is not None and budget.delta != delta:
        raise ValueError(f"delta {delta:g} differs from the budget's delta {budget.delta:g}")
    epsilon = epsilon_after(history, next_release, delta)
    if budget is not None and epsilon > budget.epsilon:
        spent = composed_epsilon(history, delta, ACCOUNTANT)
        raise BudgetExceededError(
            f"{who} has spent epsilon {spent:.4g} of {budget.epsilon:g} (delta {budget.delta:g}); "
            f"this release would bring it to {epsilon:.4g}"
        )
    return epsilon


def would_exceed(budget: PrivacyBudget, history: Sequence[Release], next_release: Release) -> bool:
    """Whether ``next_release`` would take a party with ``history`` past ``budget``."""
    try:
        check_budget("", history, next_release, budget.delta, budget)
    except BudgetExceededError:
        return True
    return False
