"""The Gaussian mechanism: every DP noise of the project is drawn here, and its witness.

Three releases add Gaussian noise: the server's user-level DP-FedAvg aggregate
(:mod:`server.cohort_aggregation`), the DP global statistics
(:mod:`common.privacy.statistics`) and a client's DP-SGD steps
(:mod:`common.training.dp_sgd`). All three draw through :class:`GaussianMechanism`, so
the noise always comes from :class:`~common.privacy.randomness.PrivacyRandomness`
(secret unless a test setting asks otherwise) and in bounded memory (blocks of
:data:`NOISE_ROWS` rows).

A release that must be checkable from the artifact alone also carries a **noise
witness** (:meth:`GaussianMechanism.witness`): :data:`WITNESS_SIZE` values drawn by the
same mechanism, right after the release's noise, with the same standard deviation, and
touched by no user. Released beside the values (scaled as they are), they let anyone
measure the noise the release carries (:mod:`common.privacy.noise_evidence`) instead of
taking the ledger's word for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.privacy.randomness import PrivacyRandomness

NOISE_ROWS = 256  # rows of the last axis drawn at once: bounded memory for large tables
WITNESS_SIZE = 1024  # pure-noise values released with a release as evidence of its noise


@dataclass(frozen=True)
class GaussianMechanism:
    """Adds N(0, ``std``^2) to every value, drawn from ``source``."""

    std: float
    source: PrivacyRandomness

    def __post_init__(self) -> None:
        if not np.isfinite(self.std) or self.std < 0:
            raise ValueError(f"noise standard deviation must be finite and >= 0, got {self.std}")

    def add_to(self, values: npt.NDArray[np.floating]) -> None:
        """Add the noise to ``values`` in place (a C-contiguous float array of any shape)."""
        if not values.flags.c_contiguous or values.dtype.kind != "f":
            raise ValueError("noise is added in place to a C-contiguous float array")
        if values.size == 0:
            return
        rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
        for start in range(0, len(rows), NOISE_ROWS):
            block = rows[start : start + NOISE_ROWS]
            block += self.source.gaussian(self.std, block.shape, values.dtype.type)

    def noise(self, shape: tuple[int, ...], dtype: type = np.float32) -> npt.NDArray[np.floating]:
        """Noise of ``shape`` alone (what :meth:`add_to` adds to zeros)."""
        values: npt.NDArray[np.floating] = np.zeros(shape, dtype=dtype)
        self.add_to(values)
        return values

    def witness(self, size: int = WITNESS_SIZE) -> npt.NDArray[np.float32]:
        """``size`` values of pure noise, to be released with the values this noise covers."""
        if size < 1:
            raise ValueError(f"a noise witness needs at least one value, got {size}")
        return self.noise((size,), np.float32)
