"""Audit of a run folder: its ledgers against what the run says it released.

The ledgers alone cannot show a cut tail: the run's ``summary.json`` and checkpoints
record the ledger heads at each release (:mod:`common.privacy.ledger_heads`) and
``metrics.csv`` lists the rounds whose models left. Every failure is one sentence:

- a ledger whose entries differ from, or fall short of, a recorded head;
- a released round of a user-level DP run without a server entry ("round 30 released
  but not in the ledger"), or a local-DP round with fewer client entries than updates;
- released DP global statistics (``statistics.npz``) without their ``dp-statistics``
  entry;
- an entry of another run, unless it was carried forward from the run this one
  continued (``started_from`` in the summary).

A run killed before its summary was written is checked against what it left (its
``config.json``, metrics and checkpoints), with a note saying so.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.privacy.folder_checks import folder_failures
from common.privacy.ledger import LedgerError, read_ledger_file
from common.privacy.ledger_audit import SERVER, AuditReport, audit_ledgers, find_ledgers
from common.privacy.ledger_heads import (
    LEDGER_FOLDER,
    SERVER_LEDGER,
    check_head,
    read_json_object,
    read_started_from,
)
from common.privacy.release_evidence import run_noise_evidence
from common.privacy.seed_replay import seeded_noise_failures
from common.privacy.statistics import STATISTICS_FILE, STATISTICS_MECHANISM

SUMMARY = "summary.json"
CONFIG = "config.json"
METRICS = "metrics.csv"
CLIENTS_LEDGER = "clients.jsonl"


def audit_path(path: Path) -> AuditReport:
    """Audit a ledger file, a node folder, or a run folder with its cross-checks."""
    report = audit_ledgers(find_ledgers(path))
    if path.is_dir() and (path / LEDGER_FOLDER).is_dir():
        report.failures.extend(run_failures(path))
        evidence = run_noise_evidence(path)  # the noise measured in the released files
        report.failures.extend(evidence.failures + seeded_noise_failures(path))
        report.notes.extend(evidence.notes)
        report.evidence.extend(evidence.rows)
        if not (path / SUMMARY).is_file():
            report.notes.append(
                f"{path / SUMMARY} is missing (the run did not finish): the ledger was checked "
                f"against its metrics and checkpoints only"
            )
    return report


def run_failures(run: Path) -> list[str]:
    """Everything in which the run folder and its ledgers disagree."""
    finished = (run / SUMMARY).is_file()
    summary = read_json_object(run / SUMMARY) if finished else {}
    if not isinstance(summary.get("config"), dict) and (run / CONFIG).is_file():
        summary["config"] = read_json_object(run / CONFIG).get("run_config")
    if not finished and summary.get("config") is None:
        return [f"{run / SUMMARY} and {CONFIG} are missing: the ledger cannot be tied to the run"]
    failures = _summary_head_failures(run, summary) if finished else []
    failures += _checkpoint_failures(run)
    failures += _run_id_failures(run, summary)
    failures += _released_round_failures(run, summary)
    entries = [e for path in sorted((run / LEDGER_FOLDER).glob("*.jsonl"))
               for e in read_ledger_file(path).entries]  # fmt: skip
    return failures + folder_failures(run, summary, entries)


def resume_failures(run: Path, round_offset: int = 0) -> list[str]:
    """Why the releases of a killed run cannot all be accounted for ([] when they can).

    What a resume checks before anything starts: the ledgers themselves (chains, every
    epsilon recomputed), the checkpoints' heads, run ids and released rounds; not the
    heads of an earlier failed attempt's ``summary.json``, which later attempts outgrow.
    ``round_offset`` is the round of the checkpoint the run continued from (its state's).
    """
    summary = read_json_object(run / SUMMARY) if (run / SUMMARY).is_file() else {}
    if (run / CONFIG).is_file():
        summary["config"] = read_json_object(run / CONFIG).get("run_config")
    if summary.get("started_from") is None and (run / LEDGER_FOLDER).is_dir():
        started = read_started_from(run / LEDGER_FOLDER)
        if started is not None:  # as the recorder writes it into summary.json
            summary["started_from"] = {"round": round_offset, "ledger": started}
    try:
        ledgers = sorted((run / LEDGER_FOLDER).glob("*.jsonl"))
        failures = audit_ledgers(ledgers).failures if ledgers else []
        failures += _checkpoint_failures(run)
        failures += _run_id_failures(run, summary)
        return failures + _released_round_failures(run, summary)
    except LedgerError as error:
        return [str(error)]


def _summary_head_failures(run: Path, summary: Mapping[str, Any]) -> list[str]:
    """Each ledger file must end exactly where summary.json says it ended."""
    heads = summary.get("ledger")
    if not isinstance(heads, dict):
        return [f"{run / SUMMARY} records no ledger head: the ledger's end cannot be checked"]
    folder, failures = run / LEDGER_FOLDER, []
    for path in sorted(folder.glob("*.jsonl")):
        recorded = heads.get(path.name)
        if not isinstance(recorded, dict):
            failures.append(f"{run / SUMMARY} records no head for {path}")
            continue
        problem = check_head(path, recorded, SUMMARY)
        held = len(read_ledger_file(path).entries)
        if not problem and held != recorded.get("entries"):
            problem = (
                f"{path.name} holds {held} entries but {SUMMARY} recorded "
                f"{recorded.get('entries')} when the run ended: entries were added after it"
            )
        if problem:
            failures.append(f"{path}: {problem}")
    for name in sorted(set(heads) - {path.name for path in folder.glob("*.jsonl")}):
        failures.append(f"{folder / name} is missing, but {SUMMARY} records its head")
    return failures


def _checkpoint_failures(run: Path) -> list[str]:
    """Each checkpoint's recorded heads must still be in the ledgers."""
    import torch

    failures = []
    for checkpoint in sorted(run.glob("*.pt")):
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
        heads = raw.get("ledger") if isinstance(raw, dict) else None
        if not isinstance(heads, dict):
            failures.append(f"{checkpoint} records no ledger head: its release cannot be checked")
            continue
        where = f"{checkpoint.name} (round {raw.get('round')})"
        for name, recorded in sorted(heads.items()):
            path = run / LEDGER_FOLDER / name
            if not path.is_file():
                failures.append(f"{path} is missing, but {where} records its head")
                continue
            problem = check_head(path, recorded, where)
            if problem:
                failures.append(f"{path}: {problem}")
    return failures


def _started_from(summary: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The round this run continued from (0) and its carried server ledger record ({})."""
    started = summary.get("started_from")
    if not isinstance(started, dict):
        return 0, {}
    carried = started.get("ledger")
    return int(started.get("round", 0)), carried if isinstance(carried, dict) else {}


def _run_id_failures(run: Path, summary: Mapping[str, Any]) -> list[str]:
    """Entries belong to this run, or were carried forward from the run it continued."""
    run_id = str(summary.get("run_id") or run.name)
    _, carried = _started_from(summary)
    carried_entries = int(carried.get("entries", 0))
    ancestors = set(carried.get("run_ids", []))
    failures = []
    server = run / LEDGER_FOLDER / SERVER_LEDGER
    if carried_entries and server.is_file():
        problem = check_head(server, carried, "the started-from record")
        if problem:
            failures.append(f"{server}: {problem}")
    for path in sorted((run / LEDGER_FOLDER).glob("*.jsonl")):
        ledger = read_ledger_file(path)
        for index, (entry, number) in enumerate(
            zip(ledger.entries, ledger.line_numbers, strict=True)
        ):
            carried_here = path == server and index < carried_entries
            if entry.run_id == run_id or (carried_here and entry.run_id in ancestors):
                continue
            failures.append(
                f"{path}, line {number}: run id {entry.run_id!r} is neither this run's "
                f"({run_id!r}) nor one it started from"
            )
    return failures


def _metric_rounds(run: Path) -> dict[int, float]:
    """Rounds in metrics.csv with the number of client updates each aggregated."""
    with (run / METRICS).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return {int(row["round"]): float(row.get("clients") or 0) for row in rows}
    except (KeyError, ValueError) as error:
        raise LedgerError(f"{run / METRICS}: malformed row ({error})") from None


def _released_round_failures(run: Path, summary: Mapping[str, Any]) -> list[str]:
    """Every round whose model left has its ledger entries (server, or each client)."""
    config = summary.get("config")
    dp = config.get("dp") if isinstance(config, dict) else None
    failures = _statistics_failures(run, summary)  # whatever the summary says the mode is
    if dp not in ("user", "local"):
        return failures
    if not (run / METRICS).is_file():
        return [f"{run / METRICS} is missing: the released rounds cannot be checked"]
    offset, _ = _started_from(summary)
    run_id = str(summary.get("run_id") or run.name)
    released = {r: n for r, n in _metric_rounds(run).items() if r > offset}
    completed = summary.get("rounds")
    if summary.get("status") == "completed" and isinstance(completed, int):
        released.update({r: released.get(r, 0) for r in range(offset + 1, offset + completed + 1)})
    if dp == "user":
        ledger = read_ledger_file(run / LEDGER_FOLDER / SERVER_LEDGER).entries
        ours = [e for e in ledger if e.who == SERVER and e.run_id == run_id]
        rounds = {e.round for e in ours if e.mechanism != STATISTICS_MECHANISM}
        return failures + [
            f"round {r} released but not in the ledger" for r in sorted(released) if r not in rounds
        ]
    clients = run / LEDGER_FOLDER / CLIENTS_LEDGER
    if not clients.is_file():  # deployed nodes keep their own ledgers
        return failures
    counts = Counter(e.round for e in read_ledger_file(clients).entries if e.run_id == run_id)
    return failures + [
        f"round {r}: {int(n)} client updates aggregated but {counts[r]} in the ledger"
        for r, n in sorted(released.items())
        if counts[r] < n
    ]


def _statistics_failures(run: Path, summary: Mapping[str, Any]) -> list[str]:
    """Released statistics need their dp-statistics entry, whatever the config says."""
    if not (run / STATISTICS_FILE).is_file():
        return []
    run_id = str(summary.get("run_id") or run.name)
    server = run / LEDGER_FOLDER / SERVER_LEDGER
    entries = read_ledger_file(server).entries if server.is_file() else []
    if any(e.mechanism == STATISTICS_MECHANISM and e.run_id == run_id for e in entries):
        return []
    return [
        f"{run / STATISTICS_FILE} released but no {STATISTICS_MECHANISM} entry of this run "
        f"is in the ledger"
    ]
