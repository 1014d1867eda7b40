"""The ledger audit (common.privacy.ledger_audit) and its command (common.privacy.report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from common.privacy.accounting import Release, pld_epsilon, rdp_epsilon
from common.privacy.ledger import LedgerEntry, PrivacyBudget, PrivacyLedger, read_ledger
from common.privacy.ledger_audit import audit_ledgers, find_ledgers
from common.privacy.ledger_heads import ledger_heads
from common.privacy.report import main

DELTA = 1e-5
ROUNDS = 4
NODES = {"node-1": Release(1.5, 0.1, 10), "node-2": Release(1.5, 0.2, 10)}


def honest_run(folder: Path) -> Path:
    """A run folder whose ledgers were written by the real accounting: server + 2 nodes."""
    server = PrivacyLedger(folder / "ledger" / "server.jsonl")
    clients = PrivacyLedger(folder / "ledger" / "clients.jsonl")
    budget = PrivacyBudget(epsilon=8.0, delta=DELTA)
    for number in range(1, ROUNDS + 1):
        common: dict[str, Any] = {
            "run_id": "run-a",
            "round": number,
            "unit": "user",
            "clip_norm": 1.0,
            "population": 943,
        }
        for who, release in NODES.items():
            clients.record_release(
                who, release, delta=DELTA, budget=budget, mechanism="dp-sgd", **common
            )
        server.record_release(
            "server", Release(1.0, 0.3, 1), delta=DELTA, mechanism="dp-fedavg", **common
        )
    summary = {"status": "completed", "run_id": "run-a", "ledger": ledger_heads(folder / "ledger")}
    (folder / "summary.json").write_text(json.dumps(summary))
    std = 1.0 / (943 * 0.3)  # each round's noise on the mean update: the witness's
    witness = {r: torch.normal(0.0, std, (1024,), generator=torch.Generator().manual_seed(r))
               for r in range(1, ROUNDS + 1)}  # fmt: skip
    torch.save({"round": ROUNDS, "ledger": summary["ledger"], "noise_witness": witness},
               folder / "checkpoint.pt")  # fmt: skip
    return folder


def rewrite(path: Path, line: int, **changes: object) -> None:
    """Edit fields of one ledger line in place (tampering)."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    record.update(changes)
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def run_audit(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main([str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_honest_run_passes_and_states_the_guarantee(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = honest_run(tmp_path / "run")
    server_last = read_ledger(run / "ledger" / "server.jsonl")[-1]
    # Execute
    code, out, _ = run_audit(run, capsys, "--json", str(tmp_path / "report.json"))
    report = json.loads((tmp_path / "report.json").read_text())
    # Assert
    assert code == 0
    assert "PASSED" in out
    assert f"epsilon = {server_last.epsilon:.4g}, delta = 1e-05" in out
    assert "adding or removing one user's whole interaction sequence" in out
    assert "not the server itself: in a deployment it sees the cohorts' clipped sums" in out
    assert "in a simulation it reads every user's data" in out
    assert "anyone who sees the node's model updates, the server included" in out
    assert report["passed"] is True
    assert report["clients"]["count"] == 2
    assert report["clients"]["with_budget"] == 2
    assert 0 < report["pld_over_rdp"]["max"] <= 1
    assert [p["who"] for p in report["parties"]] == ["server", "node-1", "node-2"]


def test_recomputed_epsilons_match_direct_accounting_of_each_prefix(tmp_path: Path) -> None:
    # Prepare: parties sharing prefixes, so the replay reuses and rewinds its path
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    a, b, c = Release(1.2, 0.1, 5), Release(2.0, 0.5, 2), Release(0.9, 1.0, 1)
    histories = {"x": [a, b, c], "y": [a, b, b], "z": [a, c], "w": [c]}
    fields: dict[str, Any] = {
        "run_id": "r",
        "unit": "window",
        "mechanism": "dp-sgd",
        "clip_norm": 1.0,
        "population": 943,
    }
    for who, history in histories.items():
        for number, release in enumerate(history, start=1):
            ledger.record_release(who, release, delta=DELTA, round=number, **fields)
    # Execute
    report = audit_ledgers([ledger.path])
    # Assert
    assert report.passed
    for party in report.parties:
        history = histories[party.who]
        for count, item in enumerate(party.checked, start=1):
            assert item.rdp_epsilon == pytest.approx(rdp_epsilon(history[:count], DELTA))
            assert item.pld_epsilon == pytest.approx(pld_epsilon(history[:count], DELTA))


def test_an_epsilon_edited_lower_fails_naming_who_and_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: line 5 of clients.jsonl is node-1's round 3
    run = honest_run(tmp_path / "run")
    clients = run / "ledger" / "clients.jsonl"
    entry = read_ledger(clients)[4]
    assert (entry.who, entry.round) == ("node-1", 3)
    rewrite(clients, 5, epsilon=entry.epsilon * 0.5)
    # Execute
    code, out, _ = run_audit(run, capsys)
    # Assert
    assert code == 1
    assert f"{clients}, line 5: node-1 round 3: recorded epsilon" in out
    # a PLD entry is checked against PLD; RDP, looser, is only its cross-check
    assert "PLD recomputes from the recorded parameters: the epsilon is understated" in out
    assert "is below the independent PLD epsilon" not in out
    assert f"{clients}, line 6: entry 6 does not chain to entry 5" in out
    assert "FAILED: 2 problem(s)" in out


def test_a_noise_multiplier_edited_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the server's round 2 claims more noise than its epsilon was computed with
    run = honest_run(tmp_path / "run")
    rewrite(run / "ledger" / "server.jsonl", 2, noise_multiplier=0.5)
    # Execute
    code, out, _ = run_audit(run, capsys)
    # Assert
    assert code == 1
    assert "server.jsonl, line 2: server round 2: recorded epsilon" in out
    assert "PLD recomputes from the recorded parameters: the epsilon is understated" in out
    assert "server.jsonl, line 3: entry 3 does not chain to entry 2" in out


def test_a_budget_violation_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: honest epsilons, but the node kept training past its budget of 2
    ledger = PrivacyLedger(tmp_path / "node" / "ledger.jsonl")
    release, history = Release(1.0, 0.2, 10), []
    for number in range(1, 4):
        history.append(release)
        epsilon = rdp_epsilon(history, DELTA)
        ledger.append(
            LedgerEntry("r", number, "node-7", "user", "dp-sgd", 1.0, 0.2, 10, DELTA, epsilon,
                        "rdp", 1.0, 2.0, 0.0, 943)
        )  # fmt: skip
    # Execute
    code, out, _ = run_audit(tmp_path / "node", capsys)
    # Assert
    assert rdp_epsilon(history[:1], DELTA) > 2.0
    assert code == 1
    assert "line 1: node-7 round 1: epsilon" in out
    assert "exceeds the budget 2" in out
    assert "FAILED: 3 problem(s)" in out


def test_mixed_units_for_one_party_fail(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    fields: dict[str, Any] = {"run_id": "r", "mechanism": "dp-sgd", "clip_norm": 1.0,
                              "population": 943}  # fmt: skip
    ledger.record_release("n", Release(2.0, 0.1, 1), delta=DELTA, round=1, unit="user", **fields)
    ledger.record_release("n", Release(2.0, 0.1, 1), delta=DELTA, round=2, unit="window", **fields)
    report = audit_ledgers([ledger.path])
    assert report.failures == [
        "n: entries mix units user and window; one guarantee cannot cover them"
    ]


def test_window_unit_is_explained_with_group_privacy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    fields: dict[str, Any] = {
        "run_id": "r",
        "unit": "window",
        "mechanism": "dp-sgd",
        "clip_norm": 1.0,
        "population": 943,
    }
    ledger.record_release("n", Release(2.0, 0.1, 5), delta=DELTA, round=1, **fields)
    code, out, _ = run_audit(ledger.path, capsys)
    assert code == 0
    assert "the model updates of n are (epsilon, delta)-differentially private" in out
    assert "one training window (an input subsequence and its target)" in out
    assert "about k times epsilon (group privacy)" in out


def test_truncated_records_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = honest_run(tmp_path / "run")
    with (run / "ledger" / "server.jsonl").open("a") as handle:
        handle.write('{"run_id": "run-a", "rou')
    code, out, _ = run_audit(run, capsys)
    assert code == 0
    assert "1 record(s) cut short by a crash were skipped" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty folder", "no ledger found (looked for ledger/*.jsonl and ledger.jsonl)"),
        ("empty ledger", "the ledger holds no entries"),
        ("malformed", "clients.jsonl, line 3: field 'steps' must be an integer >= 1, got 0"),
    ],
)
def test_unreadable_input_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    # Prepare
    target = tmp_path / "run"
    if setup == "empty folder":
        target.mkdir()
    elif setup == "empty ledger":
        (target / "ledger").mkdir(parents=True)
        (target / "ledger" / "server.jsonl").write_text("")
    elif setup == "malformed":
        honest_run(target)
        rewrite(target / "ledger" / "clients.jsonl", 3, steps=0)
    # Execute
    code, out, err = run_audit(target, capsys)
    # Assert
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("fedseqrec-audit: error: ")
    assert message in err


def test_find_ledgers_takes_a_file_a_run_folder_or_a_node_folder(tmp_path: Path) -> None:
    run = honest_run(tmp_path / "run")
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "ledger.jsonl").write_text("")
    assert [p.name for p in find_ledgers(run)] == ["clients.jsonl", "server.jsonl"]
    assert find_ledgers(run / "ledger" / "server.jsonl") == [run / "ledger" / "server.jsonl"]
    assert find_ledgers(tmp_path / "node") == [tmp_path / "node" / "ledger.jsonl"]
