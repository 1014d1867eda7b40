"""The audit's HTML page (common.privacy.html_report) and ``fedseqrec-audit --html``."""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

import pytest
import torch

from common.privacy.accounting import Release
from common.privacy.html_report import render_html
from common.privacy.ledger import PrivacyBudget, PrivacyLedger
from common.privacy.ledger_audit import AuditReport, audit_ledgers
from common.privacy.ledger_heads import ledger_heads
from common.privacy.report import PASSED, main
from common.privacy.run_audit import audit_path

DELTA = 1e-5
ROUNDS = 4
SCRIPT = "<script>alert(1)</script>"
NODES = {"node-1": Release(1.5, 0.1, 10), SCRIPT: Release(1.5, 0.2, 10)}


def run_folder(folder: Path) -> Path:
    """A run folder written by the real accounting: the server and two nodes, one of them
    named like an injected script, ``ROUNDS`` rounds each."""
    server = PrivacyLedger(folder / "ledger" / "server.jsonl")
    clients = PrivacyLedger(folder / "ledger" / "clients.jsonl")
    budget = PrivacyBudget(epsilon=8.0, delta=DELTA)
    for number in range(1, ROUNDS + 1):
        common: dict[str, Any] = {
            "run_id": folder.name, "round": number, "unit": "user", "clip_norm": 1.0,
            "population": 943,
        }  # fmt: skip
        for who, release in NODES.items():
            clients.record_release(
                who, release, delta=DELTA, budget=budget, mechanism="dp-sgd", **common
            )
        server.record_release(
            "server", Release(1.0, 0.3, 1), delta=DELTA, mechanism="dp-fedavg", **common
        )
    summary: dict[str, Any] = {"status": "completed", "run_id": folder.name}
    summary["ledger"] = ledger_heads(folder / "ledger")
    (folder / "summary.json").write_text(json.dumps(summary))
    std = 1.0 / (943 * 0.3)  # each round's noise on the mean update: the witness's
    witness = {r: torch.normal(0.0, std, (1024,), generator=torch.Generator().manual_seed(r))
               for r in range(1, ROUNDS + 1)}  # fmt: skip
    torch.save({"round": ROUNDS, "ledger": summary["ledger"], "noise_witness": witness},
               folder / "checkpoint.pt")  # fmt: skip
    return folder


def lower_last_epsilon(path: Path) -> None:
    """Tamper: understate the epsilon of a ledger's last entry."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[-1])
    record["epsilon"] /= 2
    lines[-1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def audit_html(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    page = tmp_path / "report.html"
    code = main([str(run), "--html", str(page)])
    capsys.readouterr()
    return code, page.read_text()


def charts(page: str) -> dict[str, str]:
    """Each party's heading text (as written, escaped) -> its SVG chart."""
    found = re.findall(r"<h3>(.*?)</h3>.*?(<svg class=\"epsilon\".*?</svg>)", page, re.DOTALL)
    return dict(found)


def test_a_passing_run_says_passed_in_a_green_banner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    # Execute
    code, page = audit_html(run, tmp_path, capsys)
    # Assert
    assert code == 0
    assert '<header class="banner pass">\n<h1>PASSED</h1>' in page
    assert escape(PASSED) in page  # the sentence as HTML text
    assert "(epsilon, delta)-differentially private" in page
    assert "None: every check passed." in page
    assert page.count("<td>mean update noise std</td>") == ROUNDS  # each witnessed round
    assert "No receipts given." in page


def test_the_page_fetches_nothing_and_runs_no_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    # Execute
    _, page = audit_html(run, tmp_path, capsys)
    # Assert
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|\shref=|url\(", page, re.I)
    assert "content=\"default-src 'none'; style-src 'unsafe-inline'\"" in page


def test_a_party_named_like_a_script_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    # Execute
    _, page = audit_html(run, tmp_path, capsys)
    # Assert
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in charts(page)
    assert page.count("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>") == ROUNDS


def test_every_string_of_the_report_is_escaped(tmp_path: Path) -> None:
    # Prepare: values the ledger reader refuses today, forced in behind its back
    report = audit_ledgers([run_folder(tmp_path / "run-a") / "ledger" / "server.jsonl"])
    entry = report.parties[0].checked[0].entry
    object.__setattr__(entry, "mechanism", SCRIPT)
    report.failures.append(f"{SCRIPT}: forged")
    report.notes.append(SCRIPT)
    report.evidence.append({"who": SCRIPT, "quantity": SCRIPT, "low": SCRIPT})
    report.receipts.append({"who": "node-1", "receipt": SCRIPT, "detail": SCRIPT})
    # Execute
    page = render_html(report)
    # Assert
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 7


def test_a_failing_run_lists_every_failure_in_a_red_banner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    lower_last_epsilon(run / "ledger" / "server.jsonl")
    expected = audit_path(run).failures
    # Execute
    code, page = audit_html(run, tmp_path, capsys)
    # Assert
    assert code == 1
    assert '<header class="banner fail">\n<h1>FAILED</h1>' in page
    items = re.findall(r"<li>(.*?)</li>", page.split('<ol class="failures">')[1].split("</ol>")[0])
    assert items == [escape(failure) for failure in expected]
    assert len(items) == 3  # understated against PLD (its accountant); summary's, model's heads
    assert "understated" in page
    assert page.count('<tr class="bad">') == 1


def test_insecure_noise_says_not_private(tmp_path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.record_release(
        "server", Release(1.0, 0.3, 1), delta=DELTA, population=943, run_id="r", round=1,
        unit="user", mechanism="dp-fedavg", clip_norm=1.0, randomness="insecure-reproducible",
    )  # fmt: skip
    # Execute
    page = render_html(audit_ledgers([tmp_path / "ledger.jsonl"]))
    # Assert
    assert '<header class="banner fail">\n<h1>NOT PRIVATE</h1>' in page
    assert "this run used insecure reproducible noise; not certified." in page


def test_each_chart_has_one_point_per_ledger_entry_and_its_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    # Execute
    _, page = audit_html(run, tmp_path, capsys)
    found = charts(page)
    # Assert
    assert sorted(found) == sorted(["server", "node-1", "&lt;script&gt;alert(1)&lt;/script&gt;"])
    for svg in found.values():
        assert svg.count("<circle") == ROUNDS
        assert ">round</text>" in svg and ">epsilon (cumulative)</text>" in svg
    assert found["node-1"].count('stroke-dasharray="7 4"') == 1  # the budget line
    assert 'stroke-dasharray="7 4"' not in found["server"]  # the server has no budget


def test_evidence_and_receipts_are_shown_with_their_agreement() -> None:
    # Prepare
    report = AuditReport(["ledger.jsonl"], [], 0, [])
    report.evidence = [
        {"who": "server", "round": 3, "quantity": "noise std", "claimed": 1.0,
         "measured": 0.98, "low": 0.93, "high": 1.04, "level": 0.95},
        {"who": "server", "quantity": "noise std", "claimed": 1.0, "measured": 0.5,
         "low": 0.45, "high": 0.55},
    ]  # fmt: skip
    report.receipts = [{"who": "node-1", "round": 2, "receipt": "9f2c", "agrees": True}]
    # Execute
    page = render_html(report)
    # Assert
    assert "<td>[0.93, 1.04] (95%)</td>" in page
    assert page.count('<td class="ok">yes</td>') == 2
    assert page.count('<td class="no">no</td>') == 1
    assert "1 receipt(s), 1 agree with the ledger." in page


@pytest.mark.parametrize("target", ["missing/report.html", "."])
def test_an_unwritable_html_path_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    # Prepare
    run = run_folder(tmp_path / "run-a")
    path = tmp_path / target
    # Execute
    code = main([str(run), "--html", str(path)])
    err = capsys.readouterr().err
    # Assert
    assert code == 2
    reason = "No such file or directory" if target != "." else "Is a directory"
    assert err == f"fedseqrec-audit: error: {path}: {reason}\n"
