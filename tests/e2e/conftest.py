"""End-to-end tests run their simulations on one Ray worker unless they need more."""

from __future__ import annotations

import pytest

from simulations.superlink import RAY_CPUS_VARIABLE


@pytest.fixture(autouse=True)
def one_ray_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ray-cpus 1`` for every ``simulations.launch`` of the test (its default comes
    from the environment): a tiny simulation gains nothing from a second worker, which
    costs about 5 s of CPU to start, and the suite shares 2 cores; the canary audit
    (``simulations.canary_audit``) takes the same default. Tests about several workers
    remove the variable (``tests/e2e/test_worker_failures.py``)."""
    monkeypatch.setenv(RAY_CPUS_VARIABLE, "1")
