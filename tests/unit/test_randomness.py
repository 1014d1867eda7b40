"""Secret randomness: noise and sampling that the run's seed cannot replay."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from common.data.partitioning import load_partition, load_split
from common.federation.config import FederatedConfig
from common.privacy.randomness import (
    INSECURE,
    SECURE,
    PrivacyRandomness,
    privacy_randomness,
    server_noise_source,
)
from common.training.cohort import cohort_sample
from tests.helpers import PROJECT_ROOT


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # float32 values: float32 draws
def test_gaussian_noise_has_the_asked_scale_shape_and_dtype(dtype: type) -> None:
    noise = PrivacyRandomness().gaussian(3.0, (400, 500), dtype)

    assert noise.shape == (400, 500) and noise.dtype == dtype
    assert abs(float(noise.mean())) < 0.03
    assert float(noise.std()) == pytest.approx(3.0, rel=0.01)
    kurtosis = float(((noise / noise.std()) ** 4).mean())
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # Gaussian, not just any sum


def test_two_secret_streams_differ_and_only_an_insecure_seed_replays() -> None:
    first, second = PrivacyRandomness(), PrivacyRandomness()
    assert first.kind == SECURE
    assert not np.array_equal(first.gaussian(1.0, (64,)), second.gaussian(1.0, (64,)))
    replay = [privacy_randomness(True, 42, 7).gaussian(1.0, (64,)) for _ in range(2)]
    assert np.array_equal(*replay)
    assert privacy_randomness(True, 42, 7).kind == INSECURE
    assert not np.array_equal(replay[0], privacy_randomness(True, 42, 8).gaussian(1.0, (64,)))
    assert privacy_randomness(False, 42, 7).kind == SECURE


def test_poisson_masks_include_each_member_with_the_rate() -> None:
    randomness = PrivacyRandomness()
    mask = randomness.poisson_mask(0.1, 200_000)
    assert mask.dtype == bool and mask.mean() == pytest.approx(0.1, abs=0.003)
    assert randomness.poisson_mask(1.0, 5).all()
    with pytest.raises(ValueError, match=r"sampling rate must be in \(0, 1\], got 0.0"):
        randomness.poisson_mask(0.0, 5)


def test_the_server_noise_source_is_one_secret_stream_unless_insecure() -> None:
    secret = server_noise_source(False, seed=42, round_offset=0)
    assert secret(1) is secret(2)
    assert not np.array_equal(
        server_noise_source(False, 42, 0)(1).gaussian(1.0, (8,)),
        server_noise_source(False, 42, 0)(1).gaussian(1.0, (8,)),
    )
    insecure = server_noise_source(True, seed=42, round_offset=3)
    assert np.array_equal(
        insecure(1).gaussian(1.0, (8,)), server_noise_source(True, 42, 0)(4).gaussian(1.0, (8,))
    )


def test_user_sampling_under_dp_is_secret(cycle_log: Path) -> None:
    split = load_split(str(cycle_log))
    config = FederatedConfig(dataset=str(cycle_log), partition_mode="cohort", dp="user",
                             users_per_client=1000, fraction_train=0.5,
                             noise_multiplier=1.0)  # fmt: skip
    partition = load_partition(config.dataset, 1, 0, config.seed)
    draws = {tuple(cohort_sample(partition, config, 1, split.n_users)) for _ in range(12)}
    assert len(draws) > 1  # the same seed and round, different users

    seeded = FederatedConfig(**{**config.__dict__, "dp": "none", "noise_multiplier": 0.0})
    replays = {tuple(cohort_sample(partition, seeded, 1, split.n_users)) for _ in range(3)}
    assert len(replays) == 1  # without DP nothing rests on it: seeded, reproducible


# Every seeded draw in common/, server/ and client/, and why privacy does not rest on it.
SEEDED_DRAWS = {
    ("common/training/centralized.py", "manual_seed"): "initialisation and dropout",
    ("common/training/centralized.py", "default_rng"): "batch shuffles",
    ("common/training/cohort.py", "default_rng"): "user sampling of runs without DP",
    ("common/training/cohort.py", "manual_seed"): "dropout",
    ("common/training/local.py", "manual_seed"): "dropout",
    ("common/training/local.py", "default_rng"): "batch shuffles of non-DP training",
    ("common/training/local.py", "SeedSequence"): "round_seed: the streams above, per round",
    ("common/training/dp_sgd.py", "manual_seed"): "dropout",
    ("common/data/item_text.py", "default_rng"): "initial embeddings of items without text",
    ("common/data/partitioning.py", "default_rng"): "partitioning users into clients",
    ("common/privacy/membership_inference.py", "default_rng"): "audit: member/non-member split",
    ("common/privacy/canaries.py", "default_rng"): "audit: canary sequences",
    ("server/server_app.py", "seed"): "Flower's node sampling (no DP mode credits it)",
    ("server/server_app.py", "manual_seed"): "initialisation of the global model",
    ("client/fault_injection.py", "default_rng"): "which simulated clients fail on purpose",
}
SEEDING_CALLS = {"default_rng", "manual_seed", "seed", "Generator", "SeedSequence", "RandomState"}
DRAWING_CALLS = {"normal", "randn", "normal_", "standard_normal", "add_noise", "poisson"}


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_no_privacy_relevant_draw_can_take_the_seed() -> None:
    """New seeded or drawing code must either use common.privacy.randomness or say why."""
    found = set()
    drawing = set()
    for package in ("common", "server", "client"):
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            name = str(path.relative_to(PROJECT_ROOT))
            if name == "common/privacy/randomness.py":
                continue
            calls = _calls(path)
            found |= {(name, call) for call in calls & SEEDING_CALLS}
            drawing |= {(name, call) for call in calls & DRAWING_CALLS}
    assert found == set(SEEDED_DRAWS)
    # noise for initialisation only; every mechanism's noise comes from randomness.py
    assert drawing == {
        ("common/models/item_embedding.py", "normal_"),
        ("common/models/attribute_embedding.py", "normal_"),
        ("common/data/item_text.py", "normal"),
    }
