"""Ledger heads: what a run records of its ledgers at each release, and continued runs.

A head is a ledger file's entry count and the hash of its last entry. The run's
``summary.json`` and every checkpoint store the heads of ``<run>/ledger/*.jsonl`` as they
were when that model left, so an audit can tell a ledger that lost its tail, or was
rewritten consistently, from the one the run wrote. A run continued from a checkpoint
starts its server ledger with every entry of the earlier run's (copied line by line, so
the hash chain holds) and records where it started in ``ledger/started-from.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.privacy.ledger import LedgerError, read_ledger_file
from common.storage.atomic import write_atomically

LEDGER_FOLDER = "ledger"
SERVER_LEDGER = "server.jsonl"
STARTED_FROM = "started-from.json"


def ledger_head(path: Path) -> dict[str, Any]:
    """``{"entries": count, "head": hash of the last entry}`` of one ledger file."""
    ledger = read_ledger_file(path)
    return {"entries": len(ledger.entries), "head": ledger.head}


def ledger_heads(folder: Path) -> dict[str, dict[str, Any]]:
    """The head of every ``*.jsonl`` ledger in ``folder`` (a run's ``ledger/``), by name."""
    if not folder.is_dir():
        return {}
    return {path.name: ledger_head(path) for path in sorted(folder.glob("*.jsonl"))}


def check_head(path: Path, recorded: Mapping[str, Any], where: str) -> str:
    """Why ``path`` does not hold the entry ``recorded`` names ("" when it does).

    ``recorded`` is a head as :func:`ledger_head` wrote it; ``where`` names who recorded it.
    """
    count, head = recorded.get("entries"), recorded.get("head")
    if not isinstance(count, int) or not isinstance(head, str):
        return f"{where} records a malformed head for {path.name}: {dict(recorded)!r}"
    ledger = read_ledger_file(path)
    if len(ledger.entries) < count:
        return (
            f"{where} records {count} entries in {path.name}, but it holds "
            f"{len(ledger.entries)}: entries were removed"
        )
    if count and ledger.hashes[count - 1] != head:
        return (
            f"{where} records entry {count} of {path.name} with hash {head[:12]}, but the "
            f"ledger's entry {count} hashes to {ledger.hashes[count - 1][:12]}: entries up "
            f"to it were changed"
        )
    return ""


def carry_forward(
    source: Path, target: Path, recorded: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Start ``target`` with every entry of ``source``; what was carried.

    ``recorded`` is the head the continued checkpoint stored for ``source``: the source
    must still hold that entry. The copy is verbatim (same lines, same chain), so the
    continued run's first release chains to the earlier run's last.
    """
    if recorded is not None:
        problem = check_head(source, recorded, "the initial checkpoint")
        if problem:
            raise LedgerError(f"{source}: {problem}")
    ledger = read_ledger_file(source)
    if target.exists() and read_ledger_file(target).entries:
        raise LedgerError(f"{target}: already holds entries; cannot carry {source} into it")
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(line + b"\n" for line in ledger.lines)
    write_atomically(target, lambda handle: handle.write(payload))
    return {
        "source": str(source),
        "entries": len(ledger.entries),
        "head": ledger.head,
        "run_ids": sorted({entry.run_id for entry in ledger.entries}),
    }


def write_started_from(folder: Path, record: Mapping[str, Any]) -> None:
    """Record where a continued run's ledger started (``ledger/started-from.json``)."""
    text = json.dumps(dict(record), indent=2, sort_keys=True) + "\n"
    write_atomically(folder / STARTED_FROM, lambda handle: handle.write(text.encode()))


def read_started_from(folder: Path) -> dict[str, Any] | None:
    """The started-from record of a run's ledger folder, if the run was continued."""
    path = folder / STARTED_FROM
    return read_json_object(path) if path.is_file() else None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a LedgerError naming the file."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LedgerError(f"{path}: not JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise LedgerError(f"{path}: must hold a JSON object")
    return record
