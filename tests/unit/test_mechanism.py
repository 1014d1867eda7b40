"""The one Gaussian mechanism (common.privacy.mechanism) and the witnesses it releases."""

from __future__ import annotations

import ast

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from common.privacy.mechanism import NOISE_ROWS, WITNESS_SIZE, GaussianMechanism
from common.privacy.noise_evidence import measure_noise
from common.privacy.randomness import PrivacyRandomness
from common.privacy.statistics import noisy_release
from server.cohort_aggregation import CohortAggregation
from tests.helpers import PROJECT_ROOT


def test_noise_is_added_in_place_with_the_asked_scale_in_row_blocks() -> None:
    values = np.full((3 * NOISE_ROWS + 5, 40), 10.0, dtype=np.float32)
    GaussianMechanism(2.0, PrivacyRandomness([3])).add_to(values)  # a fixed seed: a test
    noise = values - 10.0
    assert values.dtype == np.float32
    assert float(noise.std()) == pytest.approx(2.0, rel=0.02)  # 5 standard errors
    assert abs(float(noise.mean())) < 0.06
    blocks = [noise[i * NOISE_ROWS : (i + 1) * NOISE_ROWS] for i in range(3)]
    assert not np.array_equal(blocks[0], blocks[1])  # each block a fresh draw


def test_only_an_insecure_seed_replays_and_noise_alone_is_what_add_to_adds() -> None:
    replay = [GaussianMechanism(1.0, PrivacyRandomness([5])).noise((300, 7)) for _ in range(2)]
    assert np.array_equal(*replay)
    zeros = np.zeros((300, 7), dtype=np.float32)
    GaussianMechanism(1.0, PrivacyRandomness([5])).add_to(zeros)
    assert np.array_equal(zeros, replay[0])
    secret = [GaussianMechanism(1.0, PrivacyRandomness()).noise((8,)) for _ in range(2)]
    assert not np.array_equal(*secret)


def test_the_witness_is_pure_noise_of_the_mechanism_drawn_after_its_noise() -> None:
    mechanism = GaussianMechanism(0.5, PrivacyRandomness([9]))
    noise = mechanism.noise((4, 6))
    witness = mechanism.witness()
    assert witness.shape == (WITNESS_SIZE,) and witness.dtype == np.float32
    assert measure_noise(witness, 0.5).passed and not measure_noise(witness, 1.0).passed
    again = GaussianMechanism(0.5, PrivacyRandomness([9]))
    assert np.array_equal(again.noise((4, 6)), noise) and np.array_equal(again.witness(), witness)


@pytest.mark.parametrize(
    ("std", "values", "problem"),
    [
        (-1.0, np.zeros(3), "must be finite and >= 0, got -1.0"),
        (float("nan"), np.zeros(3), "must be finite and >= 0, got nan"),
        (1.0, np.zeros((4, 4))[:, ::2], "C-contiguous float array"),
        (1.0, np.zeros(3, dtype=np.int64), "C-contiguous float array"),
    ],
)
def test_bad_noise_or_targets_are_refused(std: float, values: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        GaussianMechanism(std, PrivacyRandomness()).add_to(values)


def test_the_dp_fedavg_witness_is_scaled_as_the_mean_update() -> None:
    aggregation = CohortAggregation(FedAvg(), noise_multiplier=1.5, clip_norm=2.0,
                                    expected_users=40.0,
                                    noise_source=lambda _round: PrivacyRandomness([4]))  # fmt: skip
    total = {"w": np.zeros((NOISE_ROWS + 1, 30), np.float32), "b": np.zeros(30, np.float32)}
    witness = aggregation.privatize(1, total)
    assert float(total["w"].std()) == pytest.approx(3.0, rel=0.03)  # z C on the sum
    assert measure_noise(witness, 3.0 / 40).passed  # z C / E on the mean and the witness
    assert not measure_noise(witness, 2 * 3.0 / 40).passed


def test_the_statistics_witness_has_each_statistics_noise() -> None:
    stats = noisy_release(np.zeros(50), np.zeros((3, 50)), {"popularity": 4.0,
                          "attribute_transitions": 0.5}, PrivacyRandomness([6]))  # fmt: skip
    assert measure_noise(stats.pure_noise("popularity"), 4.0).passed
    assert measure_noise(stats.pure_noise("attribute_transitions"), 0.5).passed
    assert len(stats.pure_noise("attribute_transitions")) == WITNESS_SIZE + 3  # + column 0
    exact = noisy_release(np.zeros(5), np.zeros((2, 5)), {"popularity": 0.0,
                          "attribute_transitions": 0.0})  # fmt: skip
    assert exact.noise_witness == {} and not exact.popularity.any()


def _gaussian_calls(path: str) -> int:
    tree = ast.parse((PROJECT_ROOT / path).read_text())
    return sum(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "gaussian"
        for node in ast.walk(tree)
    )


def test_every_dp_noise_is_drawn_by_the_one_mechanism() -> None:
    callers = {
        str(path.relative_to(PROJECT_ROOT))
        for package in ("common", "server", "client")
        for path in (PROJECT_ROOT / package).rglob("*.py")
        if _gaussian_calls(str(path.relative_to(PROJECT_ROOT)))
    }
    assert callers == {"common/privacy/mechanism.py"}
    for user in ("server/cohort_aggregation.py", "common/privacy/statistics.py",
                 "common/training/dp_sgd.py"):  # fmt: skip
        assert "GaussianMechanism(" in (PROJECT_ROOT / user).read_text()
