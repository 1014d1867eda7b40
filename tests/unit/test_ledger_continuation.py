"""A run continued from a checkpoint carries the server ledger forward (issue 14.6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.privacy.accounting import Release, pld_epsilon
from common.privacy.ledger import read_ledger
from common.privacy.report import main
from server.user_level_privacy import PrivacyBudgetSpent
from tests.helpers import user_dp_run, write_cycle_log


def test_a_continued_run_accounts_every_run_of_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: run-a trains 4 rounds; run-b continues its last checkpoint for 2 more
    log = write_cycle_log(tmp_path / "cycle.csv")
    first = user_dp_run(tmp_path / "run-a", log, 4)
    # Execute
    second = user_dp_run(tmp_path / "run-b", log, 2, initial_checkpoint=first / "checkpoint.pt")
    # Assert
    entries = read_ledger(second / "ledger" / "server.jsonl")
    assert [(e.run_id, e.round) for e in entries] == [("run-a", r) for r in range(1, 5)] + [
        ("run-b", 5),
        ("run-b", 6),
    ]
    assert entries[:4] == read_ledger(first / "ledger" / "server.jsonl")  # copied verbatim
    delta = entries[-1].delta
    assert entries[-1].epsilon == pytest.approx(pld_epsilon([Release(1.0, 0.5, 1)] * 6, delta))
    summary = json.loads((second / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == entries[-1].epsilon
    assert summary["started_from"]["ledger"]["entries"] == 4
    assert summary["started_from"]["ledger"]["run_ids"] == ["run-a"]
    assert main([str(second)]) == 0, capsys.readouterr().out
    assert f"epsilon = {entries[-1].epsilon:.4g}" in capsys.readouterr().out


def test_the_budget_covers_the_earlier_runs_too(tmp_path: Path) -> None:
    # Prepare: a budget that 4 rounds fit but 6 do not
    log = write_cycle_log(tmp_path / "cycle.csv")
    budget = pld_epsilon([Release(1.0, 0.5, 1)] * 5, 1 / 200) * 0.999
    first = user_dp_run(tmp_path / "run-a", log, 4)
    # Execute / Assert: the continued run stops at its first round past the total
    with pytest.raises(PrivacyBudgetSpent, match="round 5 would exceed the privacy budget"):
        user_dp_run(
            tmp_path / "run-b", log, 2, initial_checkpoint=first / "checkpoint.pt",
            target_epsilon=budget,
        )  # fmt: skip


def test_a_checkpoint_without_its_ledger_is_refused(tmp_path: Path) -> None:
    log = write_cycle_log(tmp_path / "cycle.csv")
    first = user_dp_run(tmp_path / "run-a", log, 2)
    (first / "ledger" / "server.jsonl").unlink()
    with pytest.raises(ValueError, match="released after 2 server ledger entries, but .* missing"):
        user_dp_run(tmp_path / "run-b", log, 1, initial_checkpoint=first / "checkpoint.pt")


def test_a_carried_ledger_edited_since_the_checkpoint_is_refused(tmp_path: Path) -> None:
    log = write_cycle_log(tmp_path / "cycle.csv")
    first = user_dp_run(tmp_path / "run-a", log, 2)
    path = first / "ledger" / "server.jsonl"
    path.write_text(path.read_text().replace('"noise_multiplier": 1.0', '"noise_multiplier": 3.0'))
    with pytest.raises(ValueError, match="entries up to it were changed"):
        user_dp_run(tmp_path / "run-b", log, 1, initial_checkpoint=first / "checkpoint.pt")
