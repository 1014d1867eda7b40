"""Shared fixtures: a tiny click log in which every user walks the item cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_cycle_log


@pytest.fixture
def cycle_log(tmp_path: Path) -> Path:
    """Path to a 20-user, 30-item cyclic click log."""
    return write_cycle_log(tmp_path / "cycle.csv")
