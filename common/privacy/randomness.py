"""Secret randomness for every draw a DP guarantee rests on: noise and sampling.

Anyone who can regenerate a mechanism's noise can subtract it, so Gaussian noise and
Poisson sampling come from a ChaCha20 stream cipher (randomgen's ``ChaCha``, 20 rounds)
keyed with 256 bits of operating-system entropy (``os.urandom``), never from the run's
public ``seed``. Opacus's own ``secure_mode`` would do this with torchcsprng, which does
not build for our torch; we follow its recipe: each Gaussian value is the sum of four
standard normal draws, halved, against floating-point attacks on single samples
(Mironov 2012). OpenDP's exact sampler is safer still but took 43 s for a Beauty item
table, too slow per round.

``insecure_seed`` makes the stream reproducible: only the run-config test setting
``insecure-reproducible-noise = true`` passes one. Such a run's ledger says so and the
audit refuses to certify it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from randomgen import ChaCha

SECURE = "os-entropy"
INSECURE = "insecure-reproducible"


class PrivacyRandomness:
    """Gaussian noise and Poisson sampling from a ChaCha20 CSPRNG."""

    def __init__(self, insecure_seed: Sequence[int] | None = None) -> None:
        if insecure_seed is None:
            bits = ChaCha(key=int.from_bytes(os.urandom(32), "little"), rounds=20)
        else:
            bits = ChaCha(seed=np.random.SeedSequence([int(v) for v in insecure_seed]), rounds=20)
        self._generator = np.random.Generator(bits)
        self.kind = SECURE if insecure_seed is None else INSECURE

    def gaussian(self, std: float, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """N(0, std^2) values of ``shape``: four standard normals summed, halved, scaled.

        The draws are made in ``dtype`` when it is float32 (as Opacus's secure mode draws
        in its tensors' float32): a third cheaper than float64 draws, which a DP-SGD step
        pays for every coordinate of the model; any other ``dtype`` draws in float64."""
        if std < 0:
            raise ValueError(f"noise standard deviation must be non-negative, got {std}")
        single = np.dtype(dtype) == np.float32
        total = self._standard_normal(shape, single)
        for _ in range(3):
            total += self._standard_normal(shape, single)
        total *= total.dtype.type(std / 2.0)
        return total.astype(dtype, copy=False)

    def _standard_normal(self, shape: tuple[int, ...], single: bool) -> np.ndarray:
        """Standard normal draws of ``shape``, in float32 if ``single`` else float64."""
        if single:
            return self._generator.standard_normal(shape, dtype=np.float32)
        return self._generator.standard_normal(shape)

    def poisson_mask(self, rate: float, n: int) -> np.ndarray:
        """Poisson sampling: each of ``n`` members is in with probability ``rate``."""
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
        if rate == 1.0:
            return np.ones(n, dtype=bool)
        return self._generator.random(n) < rate


def privacy_randomness(insecure_reproducible: bool, *seed: int) -> PrivacyRandomness:
    """Secret randomness, or (only when the run config asks) a stream replayable from ``seed``."""
    return PrivacyRandomness(list(seed) if insecure_reproducible else None)


def server_noise_source(
    insecure_reproducible: bool, seed: int, round_offset: int
) -> Callable[[int], PrivacyRandomness]:
    """The server's noise generator per round: one secret stream for the whole run.

    The insecure test setting replays round ``round_offset + r`` from ``seed``, which is
    exactly what an adversary holding the config could do (the red-team test does).
    """
    if insecure_reproducible:
        return lambda server_round: PrivacyRandomness([seed, round_offset + server_round, 0xD9])
    secret = PrivacyRandomness()
    return lambda _round: secret
