"""Shared fixtures: a tiny click log in which every user walks the item cycle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_USERS = 20
TINY_ITEMS = 30
TINY_LENGTH = 14


def write_cycle_log(
    path: Path, n_users: int = TINY_USERS, n_items: int = TINY_ITEMS, length: int = TINY_LENGTH
) -> Path:
    """CSV click log: user ``uK`` visits items start, start + 1, ... (mod n_items)."""
    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(n_users):
        start = int(rng.integers(0, n_items))
        lines += [f"u{user},i{(start + t) % n_items},{1000 * user + t}" for t in range(length)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cycle_log(tmp_path: Path) -> Path:
    """Path to a 20-user, 30-item cyclic click log."""
    return write_cycle_log(tmp_path / "cycle.csv")
