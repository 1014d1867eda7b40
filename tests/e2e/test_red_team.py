"""Red team: an adversary holding a finished run's folder and its public seed tries to
regenerate the server's noise and subtract it from the released model.

Row 0 of the item table (padding) gets no signal from any user, so with FedAvg the
released row 0 is the seeded initial row plus the noise of every round divided by the
expected number of users: an exact check of whether the noise was regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.partitioning import load_split
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from common.privacy.mechanism import GaussianMechanism
from common.privacy.randomness import server_noise_source
from simulations.launch import main as launch_main
from simulations.superlink import free_port
from tests.helpers import BASE, write_preset
from tests.helpers import launch_run as run


def noise_left_after_subtraction(folder: Path) -> float:
    """Largest |released row 0 - (initial row 0 + regenerated noise)|: 0 if the attack works."""
    summary = json.loads((folder / "summary.json").read_text())
    config = FederatedConfig.from_run_config(summary["config"])
    split = load_split(config.dataset)
    torch.manual_seed(config.seed)  # the server's initialisation is public and seeded
    model = build_model(config.model_config(), split.n_items)
    names = list(model_to_arrays(model))
    predicted = model.items.weight.detach().numpy()[0].astype(np.float64)
    guess = server_noise_source(True, config.seed, 0)  # the adversary's replay of the seed
    std = config.noise_multiplier * config.clip_norm
    expected_users = split.n_users * config.fraction_train
    for server_round in range(1, summary["released_round"] + 1):
        randomness = guess(server_round)
        for name in names:
            shape = tuple(model.state_dict()[name].shape)
            noise = GaussianMechanism(std, randomness).noise(shape)  # as the server draws it
            if name == "items.weight":
                predicted += noise[0] / expected_users
    released = torch.load(folder / "checkpoint.pt", weights_only=True)["state_dict"]
    return float(np.abs(released["items.weight"].numpy()[0] - predicted).max())


@pytest.mark.simulation
def test_regenerating_the_noise_from_the_seed_works_only_on_an_insecure_run(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **BASE, "num-server-rounds": 2,
                "partition-mode": "cohort", "users-per-client": 10, "fraction-train": 1.0,
                "dp": "user"}  # fmt: skip
    scale = BASE["noise-multiplier"] * BASE["clip-norm"] / 20  # noise std per round in row 0

    preset = write_preset(tmp_path / "insecure.toml",
                          {**settings, "insecure-reproducible-noise": True})  # fmt: skip
    code = launch_main(["--preset", str(preset), "--results", str(tmp_path / "insecure"),
                        "--port", str(free_port())])  # fmt: skip
    (insecure,) = (tmp_path / "insecure").iterdir()
    default = run(tmp_path, "default", settings)

    assert noise_left_after_subtraction(insecure) < 1e-5  # the attack recovers the noise
    assert noise_left_after_subtraction(default) > 0.1 * scale  # it fails on a default run
    assert code == 1  # the launcher's audit refuses to certify the insecure run
    audit = json.loads((insecure / "audit.json").read_text())
    assert not audit["passed"] and audit["not_private"]
    ledger = (insecure / "ledger" / "server.jsonl").read_text().splitlines()
    assert all('"randomness": "insecure-reproducible"' in line for line in ledger)
