"""User-level DP global statistics for on-device scoring: popularity, attribute transitions.

Each statistic is one Gaussian mechanism over ALL users (no sampling): every user's
contribution is one vector of L2 norm at most 1 (:data:`CONTRIBUTION_BOUND`), the vectors
are summed and Gaussian noise of standard deviation ``noise_multiplier`` is added to every
cell, dense (cells nobody touched get noise too, so the support leaks nothing). The
statistics compose as :class:`~common.privacy.accounting.Release` ``(z_i, 1.0, 1)``.
A budget share ``f_i`` (shares sum to 1) gives ``z_i = z / sqrt(f_i)`` where ``z`` is
the noise of ONE release at the target epsilon (PLD-calibrated): together they are
exactly one Gaussian mechanism of noise ``(sum 1 / z_i^2)^-1/2 = z``
(:func:`joint_noise_multiplier`, what the ledger records), and :func:`noise_multipliers`
checks that joint release's PLD epsilon against the target.

- ``popularity``: a user's distinct training items, each weighted ``1 / sqrt(n)``.
- ``attribute_transitions``: the user's last ``transitions_per_user`` transitions
  ``i -> j``, each adding 1 to cell ``(a, j)`` for every public attribute ``a`` of ``i``;
  the vector is scaled down to norm 1 if longer. Shape ``(n_attributes, n_items + 1)``.

Noise comes only from :class:`~common.privacy.mechanism.GaussianMechanism` (secret
randomness). Each noised statistic is released with a noise witness (pure noise drawn
by the same mechanism after the statistics' noise) and has cells no user can reach
(item 0, the padding: nobody's popularity and no transition's target), so anyone can
measure the noise from the file alone (:meth:`DPStatistics.pure_noise`,
:mod:`common.privacy.release_evidence`).
Clamping negatives and normalising (done by the scorer) are post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.privacy.accounting import Release, pld_epsilon
from common.privacy.calibration import noise_for_target_epsilon
from common.privacy.mechanism import GaussianMechanism
from common.privacy.randomness import PrivacyRandomness
from common.storage.atomic import write_atomically

CONTRIBUTION_BOUND = 1.0
STATISTICS = ("popularity", "attribute_transitions")
DEFAULT_SHARES = {"popularity": 0.04, "attribute_transitions": 0.96}
STATISTICS_FILE = "statistics.npz"  # a run's release, in its run folder
STATISTICS_MECHANISM = "dp-statistics"  # its ledger entry's mechanism
WITNESS_PREFIX = "noise_witness_"  # statistics.npz: the witness of each noised statistic


@dataclass(frozen=True)
class DPStatistics:
    """Released global statistics and the releases that account for them.

    ``noise_multipliers[name]`` is 0.0 for a non-private (exact) statistic;
    ``noise_witness[name]`` holds the noised statistic's pure-noise values (none for an
    exact one, nor in files written before witnesses existed).
    """

    popularity: npt.NDArray[np.float32]
    attribute_transitions: npt.NDArray[np.float32]
    noise_multipliers: dict[str, float] = field(default_factory=dict)
    noise_witness: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the release (arrays, noise multipliers, witnesses) atomically as one ``.npz``."""
        arrays: dict[str, Any] = {
            "popularity": self.popularity,
            "attribute_transitions": self.attribute_transitions,
            "noise_multipliers": np.array([self.noise_multipliers[name] for name in STATISTICS]),
        }
        arrays.update({f"{WITNESS_PREFIX}{n}": v for n, v in self.noise_witness.items()})
        write_atomically(Path(path), lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: Path) -> DPStatistics:
        """Read a release written by :meth:`save`; a wrong file is named in the error."""
        try:
            with np.load(Path(path)) as arrays:
                multipliers = dict(
                    zip(STATISTICS, arrays["noise_multipliers"].tolist(), strict=True)
                )
                witnesses = {
                    name: arrays[f"{WITNESS_PREFIX}{name}"].astype(np.float32)
                    for name in STATISTICS
                    if f"{WITNESS_PREFIX}{name}" in arrays
                }
                return cls(
                    arrays["popularity"].astype(np.float32),
                    arrays["attribute_transitions"].astype(np.float32),
                    multipliers,
                    witnesses,
                )
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{path}: not a DP statistics release ({error})") from None

    def pure_noise(self, name: str) -> npt.NDArray[np.float32]:
        """Released values of statistic ``name`` that hold noise only: cells no user can
        reach (item 0, padding: in no history, popularity or transition target) and the
        noise witness."""
        reachable_by_nobody = (
            self.popularity[:1] if name == "popularity" else self.attribute_transitions[:, 0]
        )
        witness = self.noise_witness.get(name, np.zeros(0, np.float32))
        return np.concatenate([reachable_by_nobody.astype(np.float32), witness])

    def epsilon(self, delta: float) -> float:
        """Epsilon of all statistics composed (infinite if any is exact): the PLD epsilon
        of their joint Gaussian mechanism, the release the ledger records."""
        if any(self.noise_multipliers[name] == 0.0 for name in STATISTICS):
            return math.inf
        joint = joint_noise_multiplier(self.noise_multipliers)
        return pld_epsilon([Release(joint, 1.0, 1)], delta)


def _scaled(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scale a contribution vector down to L2 norm CONTRIBUTION_BOUND (never up)."""
    norm = float(np.sqrt(np.square(values).sum()))
    return values * min(1.0, CONTRIBUTION_BOUND / norm) if norm > 0 else values


def popularity_contribution(
    history: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """One user's popularity vector as (item ids, values): distinct items, norm 1."""
    items = np.unique(history[history > 0])
    if not len(items):
        return items, np.zeros(0)
    return items, np.full(len(items), CONTRIBUTION_BOUND / math.sqrt(len(items)))


def transition_contribution(
    history: npt.NDArray[np.int64],
    item_attributes: Sequence[npt.NDArray[np.int64]],
    n_items: int,
    transitions_per_user: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """One user's attribute-to-item vector as (flat cells ``a * (n_items + 1) + j``, values)."""
    history = history[history > 0]
    sources = history[:-1][-transitions_per_user:]
    targets = history[1:][-transitions_per_user:]
    if not len(sources):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    cells = np.concatenate(
        [item_attributes[s] * (n_items + 1) + t for s, t in zip(sources, targets, strict=True)]
    )
    keys, counts = np.unique(cells, return_counts=True)
    return keys, _scaled(counts.astype(np.float64))


def summed_contributions(
    histories: Sequence[npt.NDArray[np.int64]],
    item_attributes: Sequence[npt.NDArray[np.int64]],
    n_attributes: int,
    transitions_per_user: int = 1,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Sums of the users' bounded contributions: dense popularity, sparse transitions.

    What one Flower client (a cohort of users, or one user) replies: the transition sum
    as its non-zero flat cells ``a * (n_items + 1) + j`` (sorted) and their values, so a
    reply stays small however many attributes the catalogue has.
    """
    if transitions_per_user < 1:
        raise ValueError(f"transitions_per_user must be >= 1, got {transitions_per_user}")
    n_items = len(item_attributes) - 1
    popularity = np.zeros(n_items + 1)
    cells: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
    values: list[npt.NDArray[np.float64]] = [np.zeros(0)]
    for history in histories:
        history = np.asarray(history, dtype=np.int64)
        items, weights = popularity_contribution(history)
        popularity[items] += weights
        user_cells, user_values = transition_contribution(
            history, item_attributes, n_items, transitions_per_user
        )
        cells.append(user_cells)
        values.append(user_values)
    keys, inverse = np.unique(np.concatenate(cells), return_inverse=True)
    sums = np.bincount(inverse, weights=np.concatenate(values), minlength=len(keys))
    if len(keys) and keys[-1] >= n_attributes * (n_items + 1):
        raise ValueError(f"attribute ids must be below n_attributes = {n_attributes}")
    return popularity, keys.astype(np.int64), sums.astype(np.float64)


def exact_statistics(
    histories: Sequence[npt.NDArray[np.int64]],
    item_attributes: Sequence[npt.NDArray[np.int64]],
    n_attributes: int,
    transitions_per_user: int = 1,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Sums of every user's bounded contributions, before noise: (popularity, transitions)."""
    popularity, cells, values = summed_contributions(
        histories, item_attributes, n_attributes, transitions_per_user
    )
    n_items = len(item_attributes) - 1
    transitions = np.zeros(n_attributes * (n_items + 1))
    transitions[cells] = values
    return popularity, transitions.reshape(n_attributes, n_items + 1)


def joint_noise_multiplier(multipliers: Mapping[str, float]) -> float:
    """The one Gaussian mechanism all statistics together are: ``(sum 1 / z_i^2)^-1/2``.

    Each statistic's contribution has norm at most 1 and gets noise ``z_i``; scaled by
    ``1 / z_i`` they form one vector with unit noise and sensitivity
    ``sqrt(sum 1 / z_i^2)``, so the joint release is exactly one Gaussian mechanism, and
    the ledger records it as one ``Release(z, 1.0, 1)``. 0 when any statistic is exact.
    """
    if any(z <= 0 for z in multipliers.values()):
        return 0.0
    return float(sum(z**-2 for z in multipliers.values()) ** -0.5)


def noise_multipliers(
    epsilon: float | None, delta: float, shares: Mapping[str, float] = DEFAULT_SHARES
) -> dict[str, float]:
    """Noise multiplier per statistic so that all of them compose to ``epsilon`` (0 = no DP)."""
    if set(shares) != set(STATISTICS) or any(s <= 0 for s in shares.values()):
        raise ValueError(f"shares must give a positive share to each of {STATISTICS}")
    if not math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9):
        raise ValueError(f"shares must sum to 1, got {sum(shares.values())}")
    if epsilon is None:
        return {name: 0.0 for name in STATISTICS}
    single = noise_for_target_epsilon(epsilon, delta, 1.0, 1)
    multipliers = {name: single / math.sqrt(shares[name]) for name in STATISTICS}
    composed = pld_epsilon([Release(joint_noise_multiplier(multipliers), 1.0, 1)], delta)
    if composed > epsilon * (1 + 1e-6):
        raise RuntimeError(f"composed epsilon {composed} exceeds the target {epsilon}")
    return multipliers


def noisy_release(
    popularity: npt.NDArray[np.float64],
    transitions: npt.NDArray[np.float64],
    multipliers: Mapping[str, float],
    randomness: PrivacyRandomness | None = None,
) -> DPStatistics:
    """The release: exact bounded sums plus Gaussian noise ``z_i * CONTRIBUTION_BOUND`` per
    cell, then each noised statistic's witness from the same mechanism."""
    randomness = randomness or PrivacyRandomness()
    noisy = {"popularity": popularity.copy(), "attribute_transitions": transitions.copy()}
    mechanisms = {
        name: GaussianMechanism(multipliers[name] * CONTRIBUTION_BOUND, randomness)
        for name in STATISTICS
        if multipliers[name] > 0
    }
    for name, mechanism in mechanisms.items():
        mechanism.add_to(noisy[name])
    witnesses = {name: mechanism.witness() for name, mechanism in mechanisms.items()}
    return DPStatistics(
        popularity=noisy["popularity"].astype(np.float32),
        attribute_transitions=noisy["attribute_transitions"].astype(np.float32),
        noise_multipliers=dict(multipliers),
        noise_witness=witnesses,
    )


def release_statistics(
    histories: Sequence[npt.NDArray[np.int64]],
    item_attributes: Sequence[npt.NDArray[np.int64]],
    n_attributes: int,
    epsilon: float | None,
    delta: float,
    shares: Mapping[str, float] = DEFAULT_SHARES,
    transitions_per_user: int = 1,
    randomness: PrivacyRandomness | None = None,
) -> DPStatistics:
    """Compute every user's bounded contributions, sum them and add calibrated Gaussian noise.

    ``epsilon`` None releases the exact sums (no DP, for the non-private reference).
    ``item_attributes[i]`` holds the public attribute ids (``0..n_attributes - 1``) of item
    ``i``; entry 0 (padding) is empty.
    """
    multipliers = noise_multipliers(epsilon, delta, shares)
    popularity, transitions = exact_statistics(
        histories, item_attributes, n_attributes, transitions_per_user
    )
    return noisy_release(popularity, transitions, multipliers, randomness)
