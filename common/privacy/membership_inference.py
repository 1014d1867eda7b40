"""Loss-threshold membership inference on canaries, turned into an epsilon lower bound.

If a mechanism is (epsilon, delta)-DP, any test that guesses "member" from its output
satisfies ``TPR <= exp(epsilon) * FPR + delta`` and, for the complementary guess,
``TNR <= exp(epsilon) * FNR + delta``. So a test with a high true-positive rate at a low
false-positive rate proves ``epsilon >= log((TPR - delta) / FPR)``, and likewise
``log((TNR - delta) / FNR)``. Here the test is "member when the canary's loss is below a
threshold", and the rates are replaced by one-sided Clopper-Pearson bounds (TPR or TNR
from below, FPR or FNR from above) so that the epsilon is a lower bound at the stated
confidence, clamped at 0.

**Threshold choice: a held-out split.** Choosing the threshold on the canaries that are
then scored would inflate the bound (the maximum over thresholds of noisy estimates).
The canaries are therefore split at random, stratified by membership, into a selection
half and an evaluation half. The threshold and which of the two inequalities to use are
chosen on the selection half only; the evaluation half then gives the two
Clopper-Pearson bounds of that single test, each at ``(1 - confidence) / 2``, so that
both hold together with probability ``confidence`` (union bound).

**Caveat.** All canaries of one audit share one training run, and the Clopper-Pearson
bounds treat them as independent trials. This is the usual one-run canary audit; a
bound with a proof for one run needs independently included canaries and a different
count statistic (Steinke, Nasr and Jagielski, "Privacy auditing with one (1) training
run", 2023). The figure is a check that can expose a broken guarantee, not a
certificate of privacy: an empirical lower bound far below the theoretical epsilon says
this attack did not find more leakage, not that there is none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import beta

STATEMENTS = ("tpr/fpr", "tnr/fnr")


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a success rate, at level ``1 - alpha``."""
    return float(lower_bounds(np.asarray([successes]), trials, alpha)[0])


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on a success rate, at level ``1 - alpha``."""
    return float(upper_bounds(np.asarray([successes]), trials, alpha)[0])


def lower_bounds(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """:func:`clopper_pearson_lower` of many success counts out of the same trials."""
    _check_counts(successes, trials, alpha)
    with np.errstate(invalid="ignore"):  # beta(0, .) is undefined; its bound is 0
        bounds = beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes == 0, 0.0, bounds)


def upper_bounds(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """:func:`clopper_pearson_upper` of many success counts out of the same trials."""
    _check_counts(successes, trials, alpha)
    with np.errstate(invalid="ignore"):  # beta(., 0) is undefined; its bound is 1
        bounds = beta.ppf(1.0 - alpha, successes + 1, trials - successes)
    return np.where(successes == trials, 1.0, bounds)


def _check_counts(successes: np.ndarray, trials: int, alpha: float) -> None:
    if trials < 1 or successes.min() < 0 or successes.max() > trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def epsilon_from_rates(true_low: np.ndarray, false_high: np.ndarray, delta: float) -> np.ndarray:
    """``log((true_low - delta) / false_high)``, clamped at 0 (elementwise)."""
    positive = true_low - delta > false_high
    ratio = np.where(positive, true_low - delta, 1.0) / np.where(positive, false_high, 1.0)
    return np.log(ratio)


def epsilon_bounds(
    true_positives: np.ndarray,
    false_positives: np.ndarray,
    members: int,
    nonmembers: int,
    statement: str,
    delta: float,
    alpha: float,
) -> np.ndarray:
    """Epsilon lower bounds of one inequality for many tests, each rate at ``1 - alpha``.

    ``tpr/fpr``: TPR from below and FPR from above; ``tnr/fnr``: TNR from below and FNR
    from above (the same test read for its "non-member" guesses).
    """
    if statement == "tpr/fpr":
        low = lower_bounds(true_positives, members, alpha)
        high = upper_bounds(false_positives, nonmembers, alpha)
    elif statement == "tnr/fnr":
        low = lower_bounds(nonmembers - false_positives, nonmembers, alpha)
        high = upper_bounds(members - true_positives, members, alpha)
    else:
        raise ValueError(f"statement must be one of {', '.join(STATEMENTS)}, got {statement!r}")
    return epsilon_from_rates(low, high, delta)


@dataclass(frozen=True)
class ThresholdTest:
    """Counts of the test "member when loss < threshold" on some canaries."""

    threshold: float
    members: int
    nonmembers: int
    true_positives: int
    false_positives: int

    @classmethod
    def count(cls, threshold: float, losses: np.ndarray, is_member: np.ndarray) -> ThresholdTest:
        """Apply the test to ``losses``; ``is_member`` says which canaries were planted."""
        guessed = losses < threshold
        return cls(
            threshold=float(threshold),
            members=int(is_member.sum()),
            nonmembers=int((~is_member).sum()),
            true_positives=int((guessed & is_member).sum()),
            false_positives=int((guessed & ~is_member).sum()),
        )

    def epsilon_bound(self, statement: str, delta: float, alpha: float) -> float:
        """Epsilon lower bound of one inequality, each rate bounded at level ``1 - alpha``."""
        bounds = epsilon_bounds(
            np.asarray([self.true_positives]),
            np.asarray([self.false_positives]),
            self.members,
            self.nonmembers,
            statement,
            delta,
            alpha,
        )
        return float(bounds[0])

    def youden(self) -> float:
        """TPR - FPR: how well the test separates, without any confidence bound."""
        return self.true_positives / self.members - self.false_positives / self.nonmembers


@dataclass(frozen=True)
class MembershipAudit:
    """The chosen test, its counts on the evaluation half and the epsilon lower bound.

    ``ceiling`` is the bound a perfect test would reach on the evaluation half: the
    audit cannot contradict a theoretical epsilon above it, whatever the model does.
    """

    epsilon_lower_bound: float
    ceiling: float
    confidence: float
    delta: float
    statement: str
    evaluation: ThresholdTest
    selection: ThresholdTest
    selection_epsilon: float
    auc: float
    member_loss_mean: float
    nonmember_loss_mean: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the two tests as nested dicts)."""
        return asdict(self)


def selection_mask(is_member: np.ndarray, seed: int) -> np.ndarray:
    """A random half of the members and a random half of the non-members (stratified)."""
    rng = np.random.default_rng([seed, 0x5E1])
    chosen = np.zeros(len(is_member), dtype=bool)
    for group in (np.flatnonzero(is_member), np.flatnonzero(~is_member)):
        chosen[rng.permutation(group)[: len(group) // 2]] = True
    return chosen


def candidate_thresholds(losses: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct losses, plus one below and one above all."""
    values = np.unique(losses)
    if len(values) == 1:
        return np.array([values[0] - 1.0, values[0] + 1.0])
    middles = (values[1:] + values[:-1]) / 2
    return np.concatenate([[values[0] - 1.0], middles, [values[-1] + 1.0]])


def choose_test(
    losses: np.ndarray, is_member: np.ndarray, delta: float, alpha: float
) -> tuple[ThresholdTest, str, float]:
    """The threshold and inequality with the best epsilon bound on these canaries.

    Ties (often all 0 when there is little signal) go to the test that separates best
    (TPR - FPR), so a test is still chosen for the evaluation half.
    """
    thresholds = candidate_thresholds(losses)
    guessed = losses[None, :] < thresholds[:, None]
    members, nonmembers = int(is_member.sum()), int((~is_member).sum())
    tp, fp = (guessed & is_member).sum(1), (guessed & ~is_member).sum(1)
    youden = tp / members - fp / nonmembers
    best: tuple[float, float, int, str] | None = None
    for statement in STATEMENTS:
        bounds = epsilon_bounds(tp, fp, members, nonmembers, statement, delta, alpha)
        index = int(np.lexsort([youden, bounds])[-1])  # last key is primary
        key = (float(bounds[index]), float(youden[index]))
        if best is None or key > best[:2]:
            best = (*key, index, statement)
    assert best is not None  # STATEMENTS is not empty
    epsilon, _, index, statement = best
    return ThresholdTest.count(thresholds[index], losses, is_member), statement, epsilon


def auc(losses: np.ndarray, is_member: np.ndarray) -> float:
    """P(a member's loss < a non-member's loss), ties counting one half (rank AUC)."""
    members, others = losses[is_member], losses[~is_member]
    below = (members[:, None] < others[None, :]).sum()
    ties = (members[:, None] == others[None, :]).sum()
    return float((below + 0.5 * ties) / (len(members) * len(others)))


def audit_membership(
    losses: np.ndarray,
    is_member: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipAudit:
    """Empirical epsilon lower bound of the loss-threshold test (see the module docstring)."""
    losses = np.asarray(losses, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    if losses.shape != is_member.shape or losses.ndim != 1:
        raise ValueError("losses and is_member must be 1-D arrays of the same length")
    if not np.isfinite(losses).all():
        raise ValueError("every canary loss must be finite")
    if min(int(is_member.sum()), int((~is_member).sum())) < 2:
        raise ValueError("need at least 2 members and 2 non-members (one per split half)")
    if not 0.0 < confidence < 1.0 or not 0.0 <= delta < 1.0:
        raise ValueError(
            f"need confidence in (0, 1) and delta in [0, 1), got {confidence}, {delta}"
        )
    alpha = (1.0 - confidence) / 2  # two bounds per test, union bound
    chosen = selection_mask(is_member, seed)
    selection, statement, selection_epsilon = choose_test(
        losses[chosen], is_member[chosen], delta, alpha
    )
    evaluation = ThresholdTest.count(selection.threshold, losses[~chosen], is_member[~chosen])
    perfect = replace(evaluation, true_positives=evaluation.members, false_positives=0)
    return MembershipAudit(
        epsilon_lower_bound=evaluation.epsilon_bound(statement, delta, alpha),
        ceiling=perfect.epsilon_bound("tpr/fpr", delta, alpha),
        confidence=confidence,
        delta=delta,
        statement=statement,
        evaluation=evaluation,
        selection=selection,
        selection_epsilon=selection_epsilon,
        auc=auc(losses, is_member),
        member_loss_mean=float(losses[is_member].mean()),
        nonmember_loss_mean=float(losses[~is_member].mean()),
    )
