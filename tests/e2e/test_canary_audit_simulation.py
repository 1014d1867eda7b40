"""End to end: the canary audit detects planted canaries without DP, not beyond epsilon with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.privacy.ledger import read_ledger
from simulations.canary_audit import main
from tests.helpers import free_port, write_cycle_log, write_preset

MEMORISING = {"model": "lstm", "dim": 32, "layers": 1, "max-len": 40, "dropout": 0.0,
              "partition-mode": "cohort", "users-per-client": 200, "fraction-train": 1.0,
              "local-epochs": 1, "optimizer": "sgd", "lr": 1.0, "batch-size": 8,
              "strategy": "fedadam", "server-lr": 0.05, "server-tau": 1e-8,
              "num-server-rounds": 20, "eval-every": 20, "seed": 42}  # fmt: skip


def run_canary_audit(tmp_path: Path, settings: dict[str, object]) -> tuple[int, dict]:
    """Audit one tiny run with 100 canaries of 30 items; (exit code, canary_audit.json)."""
    data = write_cycle_log(tmp_path / "cycle.csv", n_users=20, n_items=200, length=14)
    preset = write_preset(
        tmp_path / "memorising.toml", {"dataset": str(data), **MEMORISING, **settings}
    )
    results = tmp_path / "results"
    code = main(["--preset", str(preset), "--canaries", "100", "--canary-length", "30",
                 "--results", str(results), "--port", str(free_port())])  # fmt: skip
    (run,) = results.iterdir()
    return code, json.loads((run / "canary_audit.json").read_text())


@pytest.mark.simulation
def test_without_dp_the_audit_detects_planted_canaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))

    code, report = run_canary_audit(tmp_path, {"dp": "none"})

    assert code == 0
    assert report["users"] == {"real": 20, "planted_canaries": 50, "total": 70}
    assert report["theoretical"]["epsilon"] is None
    assert report["theoretical"]["delta"] == pytest.approx(1 / 700)
    assert report["empirical"]["auc"] > 0.95
    assert report["empirical"]["epsilon_lower_bound"] > 1.5  # clearly above 0: the test has power


@pytest.mark.simulation
def test_with_user_level_dp_the_bound_stays_within_the_ledger_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))

    # epsilon 1 is below the 1.84 the same run reaches without DP (the ceiling of 25
    # planted and 25 unplanted canaries tested): a DP that leaked like no DP fails here
    code, report = run_canary_audit(tmp_path, {"dp": "user", "target-epsilon": 1.0})

    assert code == 0
    assert report["users"]["total"] == 70
    theory = report["theoretical"]
    assert theory["delta"] == pytest.approx(1 / 700)  # canaries count as users
    entries = read_ledger(Path(report["run"]) / "ledger" / "server.jsonl")
    assert len(entries) == 20 and entries[-1].epsilon == pytest.approx(theory["epsilon"])
    assert 0.9 < theory["epsilon"] <= 1.0
    assert report["empirical"]["epsilon_lower_bound"] <= theory["epsilon"]
    assert report["empirical"]["ceiling"] > theory["epsilon"]  # the audit could have failed
