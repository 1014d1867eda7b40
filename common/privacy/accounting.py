"""Privacy accounting of repeated subsampled Gaussian releases, by two independent methods.

A :class:`Release` is ``steps`` compositions of the Gaussian mechanism on a Poisson
subsample of rate ``sampling_rate`` with noise ``noise_multiplier`` (times the clip norm).
Local DP-SGD (Opacus) and server-side DP-FedAvg are both of this shape, so one party's
guarantee is the composition of its releases under the add/remove-one neighbouring
relation:

- :func:`pld_epsilon` uses Google's ``dp_accounting`` privacy loss distributions (PLD):
  near-exact, so it calibrates noise, checks budgets and records epsilons
  (:data:`ACCOUNTANT`), and
- :func:`rdp_epsilon` uses Opacus's ``RDPAccountant``: a looser, independent bound the
  audit reports as a cross-check (and recomputes ledger entries written with it).

Opacus and dp_accounting are imported inside the functions that need them, so that the
ledger (which only needs :class:`Release`) can be read and written without loading torch.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution

# PLD discretization of the privacy loss: 1e-3 keeps PLD below RDP on every case we
# measured (README, "Privacy audit") at a tenth of the cost of the library default 1e-4.
PLD_DISCRETIZATION = 1e-3
ACCOUNTANT = "pld"  # calibrates noise, checks budgets, records epsilons in the ledger
SHARED_PLD_CACHE = 64  # releases and histories pld_epsilon keeps (~0.3 MB each)

RdpState = list[tuple[float, float, int]]


@dataclass(frozen=True)
class Release:
    """``steps`` compositions of a Poisson-subsampled Gaussian mechanism.

    ``sampling_rate`` 1.0 means no subsampling; ``noise_multiplier`` 0 means no DP at
    all (epsilon is infinite).
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int

    def __post_init__(self) -> None:
        noise, rate = number_or_nan(self.noise_multiplier), number_or_nan(self.sampling_rate)
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"'noise_multiplier' must be >= 0, got {self.noise_multiplier!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"'sampling_rate' must be in (0, 1], got {self.sampling_rate!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"'steps' must be an integer >= 1, got {self.steps!r}")


def number_or_nan(value: object) -> float:
    """A number as a float, anything else (strings, booleans, None) as NaN, for checks."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _check_delta(delta: float) -> None:
    if not 0.0 < number_or_nan(delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def rdp_state(releases: Sequence[Release]) -> RdpState:
    """The releases as Opacus ``RDPAccountant.history`` (noise, sampling rate, steps)."""
    return [(r.noise_multiplier, r.sampling_rate, r.steps) for r in releases]


def releases_from_rdp_state(history: RdpState) -> list[Release]:
    """Inverse of :func:`rdp_state`, e.g. to read a client's persisted Opacus accountant."""
    return [Release(float(noise), float(rate), int(steps)) for noise, rate, steps in history]


def rdp_curve(release: Release) -> np.ndarray:
    """RDP of one release at the orders of Opacus's ``RDPAccountant`` (additive)."""
    return _unit_rdp_curve(release.noise_multiplier, release.sampling_rate) * release.steps


@functools.lru_cache(maxsize=4096)
def _unit_rdp_curve(noise_multiplier: float, sampling_rate: float) -> np.ndarray:
    """RDP of one step (Opacus ``compute_rdp``), read-only.

    Cached because it costs 0.1-0.4 s per call (a series at each of 151 orders) and a
    party's budget check and ledger entry reuse the same pair every round; RDP is linear
    in steps, so one step's curve serves every release of that pair.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    curve = np.asarray(
        analysis.compute_rdp(
            q=sampling_rate,
            noise_multiplier=noise_multiplier,
            steps=1,
            orders=RDPAccountant.DEFAULT_ALPHAS,
        ),
        dtype=np.float64,
    )
    curve.flags.writeable = False
    return curve


def epsilon_from_rdp(curve: np.ndarray, delta: float) -> float:
    """Opacus's RDP-to-(epsilon, delta) conversion of a composed RDP curve."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    _check_delta(delta)
    with warnings.catch_warnings():
        # "Optimal order is the smallest/largest alpha": the bound is still valid, and
        # training uses the same default orders, so records and audit agree.
        warnings.simplefilter("ignore", UserWarning)
        epsilon, _ = analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=curve, delta=delta
        )
    return float(epsilon)


def rdp_epsilon(releases: Sequence[Release], delta: float) -> float:
    """Epsilon of all releases composed, exactly as Opacus's ``RDPAccountant`` computes it.

    RDP curves add up over releases, then one conversion to (epsilon, delta).
    """
    _check_delta(delta)
    if not releases:
        return 0.0
    return epsilon_from_rdp(np.sum([rdp_curve(r) for r in releases], axis=0), delta)


class PldComposer:
    """Composes releases' privacy loss distributions, caching each distinct release.

    Mirrors ``dp_accounting.pld.PLDAccountant`` composing
    ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` ``steps`` times (add/remove-one,
    pessimistic estimate), but states are immutable values (a composed PLD, or None once
    a release without noise made epsilon infinite), so the audit can extend a shared
    prefix of many parties' histories once instead of once per party. ``max_cached``
    bounds each cache (None: unbounded), least recently used first out.
    """

    def __init__(
        self,
        value_discretization_interval: float = PLD_DISCRETIZATION,
        max_cached: int | None = None,
    ) -> None:
        self.value_discretization_interval = value_discretization_interval
        self.max_cached = max_cached
        self._cache: OrderedDict[Release, PrivacyLossDistribution] = OrderedDict()
        self._histories: OrderedDict[tuple[Release, ...], PrivacyLossDistribution | None] = (
            OrderedDict()
        )
        self._lock = threading.Lock()  # the caches are shared by a process's threads

    def empty(self) -> PrivacyLossDistribution | None:
        """The state before any release (epsilon 0)."""
        from dp_accounting.pld import privacy_loss_distribution

        return privacy_loss_distribution.identity(self.value_discretization_interval)

    def extend(
        self, state: PrivacyLossDistribution | None, release: Release
    ) -> PrivacyLossDistribution | None:
        """The state after one more release."""
        if state is None or release.noise_multiplier == 0:
            return None
        return state.compose(self._single(release))

    def compose(self, releases: Sequence[Release]) -> PrivacyLossDistribution | None:
        """The state after ``releases`` in order: :meth:`extend` from :meth:`empty`, one at a
        time (as the audit replays), resuming from the longest history composed before.

        A party's budget check and ledger entry compose its history plus one release
        every round, so each round costs one composition, not one per release so far.
        """
        key = tuple(releases)
        with self._lock:
            return self._compose(key)

    def _compose(self, key: tuple[Release, ...]) -> PrivacyLossDistribution | None:
        start = max(
            (known for known in self._histories if key[: len(known)] == known),
            key=len,
            default=(),
        )
        state = self._histories[start] if start else self.empty()
        for release in key[len(start) :]:
            state = self.extend(state, release)
        self._remember(self._histories, key, state)
        return state

    def _single(self, release: Release) -> PrivacyLossDistribution:
        single = self._cache.get(release)
        if single is None:
            from dp_accounting.pld import privacy_loss_distribution

            single = privacy_loss_distribution.from_gaussian_mechanism(
                standard_deviation=release.noise_multiplier,
                value_discretization_interval=self.value_discretization_interval,
                sampling_prob=release.sampling_rate,
            ).self_compose(release.steps)
        return self._remember(self._cache, release, single)

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
        """Store ``value`` as the most recently used entry, evicting beyond ``max_cached``."""
        cache[key] = value
        cache.move_to_end(key)
        while self.max_cached is not None and len(cache) > self.max_cached:
            cache.popitem(last=False)
        return value

    @staticmethod
    def epsilon(state: PrivacyLossDistribution | None, delta: float) -> float:
        """Epsilon of a state at ``delta`` (infinite without DP)."""
        _check_delta(delta)
        if state is None:
            return math.inf
        return float(state.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=1)
def shared_pld_composer() -> PldComposer:
    """The bounded composer :func:`pld_epsilon` shares across a process's budget checks."""
    return PldComposer(max_cached=SHARED_PLD_CACHE)


def pld_epsilon(releases: Sequence[Release], delta: float) -> float:
    """Epsilon of all releases composed, by dp_accounting's PLD (add/remove-one).

    The releases compose one at a time in order, exactly as the audit replays them, so a
    recorded epsilon and its recomputation agree to float rounding.
    """
    _check_delta(delta)
    if not releases:
        return 0.0
    composer = shared_pld_composer()
    return composer.epsilon(composer.compose(releases), delta)


def composed_epsilon(
    releases: Sequence[Release], delta: float, accountant: str = ACCOUNTANT
) -> float:
    """Epsilon of all releases composed, by ``accountant`` ("pld" or "rdp")."""
    if accountant == "pld":
        return pld_epsilon(releases, delta)
    if accountant == "rdp":
        return rdp_epsilon(releases, delta)
    raise ValueError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
