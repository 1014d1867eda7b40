"""Shared fixtures: a tiny click log in which every user walks the item cycle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import write_cycle_log


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process and per process a test starts (unless
    ``OMP_NUM_THREADS`` says otherwise), as the simulations' one-CPU client workers have:
    ``make test`` runs three pytest workers on two cores, and two OpenMP threads each
    oversubscribe them and spin waiting for one another (the unit suite took 238 CPU-s on
    two threads a worker, 145 on one)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def cycle_log(tmp_path: Path) -> Path:
    """Path to a 20-user, 30-item cyclic click log."""
    return write_cycle_log(tmp_path / "cycle.csv")
