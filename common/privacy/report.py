"""``fedseqrec-audit``: check a run's privacy ledgers and state the guarantee in plain words.

    python -m common.privacy.report results/<run-id> [--json report.json] [--html report.html]

A run folder is cross-checked with its summary, metrics and checkpoints
(:mod:`common.privacy.run_audit`). Exit status: 0 when every chain holds, every recorded
epsilon is confirmed (none below its recomputed value), every delta fits the population,
every budget is kept and every released round is ledgered; 1 when the audit found a
problem (each printed as one sentence with its file and line) or a release was made with
insecure reproducible noise ("NOT PRIVATE"); 2 when the ledgers cannot be read (one line
on stderr naming the file, line and field) or a report file cannot be written.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from common.privacy.ledger import LedgerError
from common.privacy.ledger_audit import (
    SERVER,
    AuditReport,
    agreement,
    client_distribution,
    guarantees,
)
from common.privacy.receipts import add_receipt_arguments, check_receipts
from common.privacy.run_audit import audit_path

PASSED = (
    "PASSED: every chain holds, no recorded epsilon is below its accountant's recomputation, "
    "every delta fits the population, no budget is exceeded."
)
NOT_CERTIFIED = "NOT PRIVATE: this run used insecure reproducible noise; not certified."


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog="fedseqrec-audit", description="Recompute and explain a run's privacy ledger."
    )
    parser.add_argument("path", type=Path, help="run folder, node folder or ledger .jsonl file")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--html", type=Path, help="also write the report as one HTML page")
    add_receipt_arguments(parser)  # --receipts NODE_FOLDER ..., --node-keys KEY.pub ...
    return parser


def _eps(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "inf (no noise: no guarantee)"


def render(report: AuditReport) -> str:
    """The report as text: guarantees first, then distributions, then the verdict."""
    shown = ", ".join(report.ledgers[:4])
    if len(report.ledgers) > 4:
        shown += f" and {len(report.ledgers) - 4} more"
    lines = [f"Privacy audit of {len(report.ledgers)} ledger file(s): {shown}"]
    entries = sum(len(party.checked) for party in report.parties)
    lines.append(f"{entries} entries from {len(report.parties)} parties")
    if report.skipped_lines:
        lines.append(f"{report.skipped_lines} record(s) cut short by a crash were skipped")
    lines.extend(f"Note: {note}" for note in report.notes)
    for statement in guarantees(report):
        lines += ["", *guarantee_lines(statement)]
    lines.append("")
    lines.extend(distribution_lines(report))
    lines.append("")
    if report.passed:
        lines.append(PASSED)
    else:
        if report.not_private:
            lines.append(NOT_CERTIFIED)
        lines.append(f"FAILED: {len(report.failures)} problem(s)")
        lines.extend(f"  {failure}" for failure in report.failures)
    return "\n".join(lines)


def guarantee_lines(statement: dict[str, Any]) -> list[str]:
    """One guarantee of :func:`guarantees` in plain words: what, to whom, against whom."""
    epsilon = statement["epsilon"]
    parties = statement["parties"]
    if parties == [SERVER]:
        released = {
            "dp-statistics": "global statistics",
            "dp-statistics + dp-fedavg": "global statistics and models",
        }.get(statement["mechanism"], "global models")
        subject = f"the {released} the server released are"
    elif len(parties) == 1:
        subject = f"the model updates of {parties[0]} are"
    else:
        subject = f"the model updates of each of {len(parties)} nodes are"
    spread = (
        f"epsilon = {_eps(epsilon['max'])}"
        if epsilon["min"] == epsilon["max"]
        else f"epsilon from {_eps(epsilon['min'])} to {_eps(epsilon['max'])} "
        f"(median {_eps(epsilon['median'])}), by node"
    )
    return [
        f"Guarantee ({statement['mechanism']}, unit {statement['unit']}): {subject} "
        f"(epsilon, delta)-differentially private, {spread}, "
        f"delta = {statement['delta']:g}.",
        f"  Neighbouring data sets: {statement['neighbouring']}.",
        f"  Protected: {statement['protected']}.",
        f"  Against: {statement['against']}.",
    ]


def distribution_lines(report: AuditReport) -> list[str]:
    """The clients' final epsilons and the PLD / RDP agreement, one line each."""
    lines = []
    clients = client_distribution(report)
    if clients["count"]:
        eps, pld, rdp = clients["epsilon"], clients["pld_epsilon"], clients["rdp_epsilon"]
        lines.append(
            f"Clients: {clients['count']}; final epsilon min {_eps(eps['min'])} / median "
            f"{_eps(eps['median'])} / max {_eps(eps['max'])} (PLD: {_eps(pld['min'])} / "
            f"{_eps(pld['median'])} / {_eps(pld['max'])}; RDP: {_eps(rdp['min'])} / "
            f"{_eps(rdp['median'])} / {_eps(rdp['max'])}); {clients['with_budget']} with a "
            f"budget, {clients['at_budget']} at their budget (one more release like their "
            f"last would exceed it)"
        )
    ratios = agreement(report)
    if ratios:
        lines.append(
            f"PLD vs RDP (cross-check): PLD/RDP epsilon min {ratios['min']:.3f} / "
            f"median {ratios['median']:.3f} / max {ratios['max']:.3f} over all entries "
            f"(PLD is the tighter bound, so <= 1 expected; new entries record PLD)"
        )
    return lines


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite numbers become the strings "inf" / "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def report_dict(report: AuditReport) -> dict[str, Any]:
    """The same report as a JSON-ready dictionary."""
    parties = [
        {
            "who": party.who,
            "entries": len(party.checked),
            "unit": party.last.entry.unit,
            "mechanism": party.last.entry.mechanism,
            "delta": party.last.entry.delta,
            "epsilon": party.last.spent,
            "recorded_epsilon": party.last.entry.epsilon,
            "accountant": party.last.entry.accountant,
            "rdp_epsilon": party.last.rdp_epsilon,
            "pld_epsilon": party.last.pld_epsilon,
            "budget_epsilon": party.last.entry.budget_epsilon,
            "at_budget": party.at_budget(),
        }
        for party in report.parties
    ]
    return _jsonable(
        {
            "passed": report.passed,
            "not_private": report.not_private,
            "ledgers": report.ledgers,
            "skipped_lines": report.skipped_lines,
            "guarantees": guarantees(report),
            "clients": client_distribution(report),
            "pld_over_rdp": agreement(report),
            "parties": parties,
            "failures": report.failures,
            "notes": report.notes,
            "evidence": report.evidence,
            "receipts": report.receipts,
        }
    )


def _write_json(path: Path, report: AuditReport) -> None:
    from common.storage.run_folder import write_json

    write_json(path, report_dict(report))


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 passed, 1 failed, 2 unreadable input (one line on stderr)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = audit_path(args.path)
        check_receipts(report, args)  # the nodes' signed receipts against the ledger
    except (LedgerError, ValueError, OSError) as error:
        print(f"fedseqrec-audit: error: {error}", file=sys.stderr)
        return 2
    from common.privacy.html_report import write_html

    for path, write in ((args.json, _write_json), (args.html, write_html)):
        if path is None:
            continue
        try:
            write(path, report)
        except OSError as error:
            print(f"fedseqrec-audit: error: {path}: {error.strerror}", file=sys.stderr)
            return 2
    print(render(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
