"""Each ledger entry's accountant: recorded, read back, recomputed and certified by the audit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from common.privacy.accounting import Release, pld_epsilon, rdp_epsilon
from common.privacy.ledger import (
    GENESIS,
    LedgerEntry,
    PrivacyBudget,
    PrivacyLedger,
    line_hash,
    read_ledger,
    would_exceed,
)
from common.privacy.ledger_audit import PLD_SLACK, audit_ledgers
from common.privacy.report import render, report_dict

DELTA = 1e-5
RELEASE = Release(1.2, 0.1, 10)
FIELDS: dict[str, Any] = {
    "run_id": "r",
    "unit": "user",
    "mechanism": "dp-sgd",
    "clip_norm": 1.0,
    "population": 943,
}


def entry(number: int, epsilon: float, accountant: str = "pld") -> LedgerEntry:
    """Node n's release ``number`` with a given recorded epsilon."""
    return LedgerEntry("r", number, "n", "user", "dp-sgd", *dataclasses.astuple(RELEASE),
                       DELTA, epsilon, accountant, 1.0, None, float(number), 943)  # fmt: skip


def write_chain(path: Path, records: list[dict[str, Any]]) -> None:
    """Ledger lines as given (fields dropped or not), each chained to the one before."""
    head, lines = GENESIS, []
    for record in records:
        line = json.dumps({**record, "prev_hash": head}, sort_keys=True)
        head = line_hash(line.encode())
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def legacy_records(rounds: int) -> list[dict[str, Any]]:
    """Entries as written before the accountant field: RDP epsilons, no ``accountant``."""
    records = []
    for number in range(1, rounds + 1):
        record = dataclasses.asdict(entry(number, rdp_epsilon([RELEASE] * number, DELTA), "rdp"))
        del record["accountant"]
        records.append(record)
    return records


def test_new_entries_record_the_pld_epsilon_and_say_so(tmp_path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    # Execute
    for number in range(1, 4):
        ledger.record_release("n", RELEASE, delta=DELTA, round=number, **FIELDS)
    # Assert
    entries = read_ledger(ledger.path)
    assert [e.accountant for e in entries] == ["pld"] * 3
    assert entries[-1].epsilon == pytest.approx(pld_epsilon([RELEASE] * 3, DELTA), rel=1e-12)
    assert entries[-1].epsilon < rdp_epsilon([RELEASE] * 3, DELTA)
    assert all('"accountant": "pld"' in line for line in ledger.path.read_text().splitlines())


def test_an_old_entry_without_the_field_reads_and_audits_as_rdp(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "ledger.jsonl"
    write_chain(path, legacy_records(3))
    # Execute
    entries = read_ledger(path)
    report = audit_ledgers([path])
    # Assert
    assert [e.accountant for e in entries] == ["rdp"] * 3
    assert report.passed, report.failures
    last = report.parties[0].last
    assert last.recomputed == last.rdp_epsilon == pytest.approx(entries[-1].epsilon, rel=1e-9)
    assert last.cross_check == last.pld_epsilon < last.rdp_epsilon
    assert last.spent == pytest.approx(last.rdp_epsilon, rel=1e-9)


def test_a_party_continuing_an_rdp_ledger_with_pld_entries_passes(tmp_path: Path) -> None:
    # Prepare: two old RDP entries, then the same party records with PLD
    path = tmp_path / "ledger.jsonl"
    write_chain(path, legacy_records(2))
    ledger = PrivacyLedger(path)
    # Execute
    ledger.record_release("n", RELEASE, delta=DELTA, round=3, **FIELDS)
    report = audit_ledgers([path])
    # Assert
    assert report.passed, report.failures
    assert [item.entry.accountant for item in report.parties[0].checked] == ["rdp", "rdp", "pld"]
    assert report.parties[0].last.spent == pytest.approx(pld_epsilon([RELEASE] * 3, DELTA))


def test_the_audit_certifies_the_larger_of_recorded_and_recomputed(tmp_path: Path) -> None:
    # Prepare: an honest entry, then one that overstates its epsilon
    honest = pld_epsilon([RELEASE], DELTA)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(entry(1, honest))
    ledger.append(entry(2, 5.0))
    # Execute
    report = audit_ledgers([ledger.path])
    # Assert
    assert report.passed, report.failures
    first, second = report.parties[0].checked
    assert first.spent == honest
    assert second.recomputed == pytest.approx(pld_epsilon([RELEASE] * 2, DELTA))
    assert second.spent == 5.0


@pytest.mark.parametrize(
    ("factor", "passes"), [(1 - PLD_SLACK / 10, True), (1 - 10 * PLD_SLACK, False)]
)
def test_an_understated_pld_epsilon_fails_beyond_the_slack(
    tmp_path: Path, factor: float, passes: bool
) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(entry(1, pld_epsilon([RELEASE], DELTA) * factor))
    # Execute
    report = audit_ledgers([ledger.path])
    # Assert
    assert report.passed is passes
    if not passes:
        assert report.failures == [
            f"{ledger.path}, line 1: n round 1: recorded epsilon "
            f"{report.parties[0].last.entry.epsilon:.6g} is below the "
            f"{report.parties[0].last.pld_epsilon:.6g} PLD recomputes from the recorded "
            f"parameters: the epsilon is understated"
        ]


def test_an_rdp_entry_still_fails_below_either_accountant(tmp_path: Path) -> None:
    # Prepare: an old entry that recorded the (smaller) PLD epsilon while naming RDP
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(entry(1, pld_epsilon([RELEASE], DELTA) * 0.9, "rdp"))
    # Execute
    report = audit_ledgers([ledger.path])
    # Assert
    assert len(report.failures) == 2
    assert "RDP recomputes from the recorded parameters" in report.failures[0]
    assert "is below the independent PLD epsilon" in report.failures[1]


def test_the_cross_check_is_reported(tmp_path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    for number in range(1, 3):
        ledger.record_release("n", RELEASE, delta=DELTA, round=number, **FIELDS)
    # Execute
    report = audit_ledgers([ledger.path])
    text, data = render(report), report_dict(report)
    # Assert
    party = data["parties"][0]
    assert party["accountant"] == "pld"
    assert party["epsilon"] == party["pld_epsilon"] == party["recorded_epsilon"]
    assert party["rdp_epsilon"] == pytest.approx(rdp_epsilon([RELEASE] * 2, DELTA))
    assert 0 < data["pld_over_rdp"]["max"] < 1
    assert "PLD vs RDP (cross-check): PLD/RDP epsilon min" in text


@pytest.mark.parametrize(("rounds", "at_budget"), [(2, False), (3, True)])
def test_at_budget_is_judged_by_the_budget_checks_accountant(
    tmp_path: Path, rounds: int, at_budget: bool
) -> None:
    # Prepare: a budget that 3 releases fit by PLD but 4 do not (RDP would refuse the 3rd)
    budget = PrivacyBudget(
        (pld_epsilon([RELEASE] * 3, DELTA) + pld_epsilon([RELEASE] * 4, DELTA)) / 2, DELTA
    )
    assert rdp_epsilon([RELEASE] * 3, DELTA) > budget.epsilon
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    for number in range(1, rounds + 1):
        ledger.record_release("n", RELEASE, delta=DELTA, budget=budget, round=number, **FIELDS)
    # Execute
    party = audit_ledgers([ledger.path]).parties[0]
    # Assert
    assert party.at_budget() is at_budget
    assert party.next_epsilon == pytest.approx(pld_epsilon([RELEASE] * (rounds + 1), DELTA))
    assert would_exceed(budget, party.releases(), RELEASE) is at_budget
