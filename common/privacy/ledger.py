"""The privacy ledger: an append-only JSON-lines record of every DP release, and budgets.

Every party that releases something computed from private data (the server's noisy
aggregate, a node's DP-SGD update) appends one :class:`LedgerEntry` per release *before*
the release leaves, with the cumulative epsilon of all its releases so far. Appends are
one ``os.write`` on an ``O_APPEND`` descriptor followed by ``fsync``, so several
processes can share a file and a crash never loses a release that left. A run folder
keeps its ledgers in ``<run>/ledger/*.jsonl``; a deployed node keeps ``ledger.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.privacy.accounting import Release, number_or_nan, rdp_epsilon

logger = logging.getLogger("fedseqrec.privacy")

UNITS = ("user", "window")
MECHANISMS = ("dp-sgd", "dp-fedavg")
ACCOUNTANTS = ("rdp",)


class LedgerError(ValueError):
    """A ledger cannot be read; the message names the file, the line and the field."""


class BudgetExceededError(RuntimeError):
    """A release was refused because it would take its party past its budget."""


def _field_error(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"field '{name}' must be {expected}, got {value!r}")


@dataclass(frozen=True)
class LedgerEntry:
    """One release by one party (``who``: "server" or a node id) in one round."""

    run_id: str
    round: int
    who: str
    unit: str
    mechanism: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    clip_norm: float
    budget_epsilon: float | None
    time: float

    def __post_init__(self) -> None:
        for name in ("run_id", "who"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _field_error(name, "a non-empty string", value)
        choices = {"unit": UNITS, "mechanism": MECHANISMS, "accountant": ACCOUNTANTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise _field_error(name, "one of " + ", ".join(allowed), getattr(self, name))
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise _field_error("round", "an integer >= 0", self.round)
        try:
            self.release()
        except ValueError as error:
            raise ValueError(f"field {error}") from None
        if not 0.0 < number_or_nan(self.delta) < 1.0:
            raise _field_error("delta", "in (0, 1)", self.delta)
        if not number_or_nan(self.epsilon) >= 0:
            raise _field_error("epsilon", ">= 0 (Infinity without noise)", self.epsilon)
        if not 0 < number_or_nan(self.clip_norm) < math.inf:
            raise _field_error("clip_norm", "a positive number", self.clip_norm)
        budget = self.budget_epsilon
        if budget is not None and not 0 < number_or_nan(budget) < math.inf:
            raise _field_error("budget_epsilon", "a positive number or null", budget)
        if not math.isfinite(number_or_nan(self.time)):
            raise _field_error("time", "unix seconds", self.time)

    def release(self) -> Release:
        """This entry's mechanism parameters as a :class:`Release`."""
        return Release(self.noise_multiplier, self.sampling_rate, self.steps)

    def to_json(self) -> str:
        """One JSON line (no newline); infinite epsilon is written as ``Infinity``."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELDS = tuple(field.name for field in dataclasses.fields(LedgerEntry))


def entry_from_json(text: str) -> LedgerEntry:
    """Parse one ledger line; a ValueError names the offending field."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("a ledger line must be a JSON object")
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise ValueError(f"field '{missing[0]}' is missing")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"field '{unknown[0]}' is not a ledger field")
    return LedgerEntry(**record)


def _is_truncated(text: str) -> bool:
    """Whether a line is a record cut short (a crash mid-write), not a corrupt one.

    Records are flat JSON objects, so a cut one opens with ``{`` but does not close,
    unless the cut fell inside a string value.
    """
    stripped = text.strip()
    try:
        json.loads(stripped)
    except json.JSONDecodeError as error:
        if not stripped.startswith("{") or error.msg == "Extra data":
            return False
        return not stripped.endswith("}") or error.msg.startswith("Unterminated string")
    return False


@dataclass(frozen=True)
class LedgerFile:
    """A ledger file as read: its entries, their line numbers, truncated lines skipped."""

    path: Path
    entries: list[LedgerEntry]
    line_numbers: list[int]
    skipped: int


def read_ledger(path: Path) -> list[LedgerEntry]:
    """All entries of a ledger file, in append order.

    A malformed line raises :class:`LedgerError` naming the file, line and field. A last
    line cut short by a crash mid-write is skipped with a warning (its release never
    left, since the append comes first), and so is such a line that a later append
    sealed with a newline.
    """
    return read_ledger_file(path).entries


def read_ledger_file(path: Path) -> LedgerFile:
    """Like :func:`read_ledger`, keeping line numbers and the count of skipped lines."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"{path}: ledger file not found") from None
    except IsADirectoryError:
        raise LedgerError(f"{path}: a folder, not a ledger file") from None
    entries: list[LedgerEntry] = []
    numbers: list[int] = []
    skipped = 0
    chunks = raw.split(b"\n")
    for number, chunk in enumerate(chunks, start=1):
        last = number == len(chunks)
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError:
            if not last:
                raise LedgerError(f"{path}, line {number}: not UTF-8 text") from None
            line = chunk.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            entry = entry_from_json(line)
        except json.JSONDecodeError as error:
            if not _is_truncated(line):
                raise LedgerError(f"{path}, line {number}: not JSON ({error.msg})") from None
            logger.warning("%s, line %d: skipped a record cut short by a crash", path, number)
            skipped += 1
            continue
        except (TypeError, ValueError) as error:
            raise LedgerError(f"{path}, line {number}: {error}") from None
        entries.append(entry)
        numbers.append(number)
    return LedgerFile(Path(path), entries, numbers, skipped)


class PrivacyLedger:
    """An append-only ledger file shared safely by any number of processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, entry: LedgerEntry) -> None:
        """Write one line with a single ``os.write`` (O_APPEND), then fsync it.

        If the file ends with a line cut short by a crash, a newline goes first so that
        the new record starts a line of its own.
        """
        payload = (entry.to_json() + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                payload = b"\n" + payload
            written = os.write(descriptor, payload)
            if written != len(payload):
                raise OSError(f"{self.path}: short write ({written} of {len(payload)} bytes)")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if created:
            _fsync_folder(self.path.parent)

    def entries(self) -> list[LedgerEntry]:
        """Every entry so far (none when the file does not exist yet)."""
        return read_ledger(self.path) if self.path.exists() else []

    def releases(self, who: str) -> list[Release]:
        """Every release of one party so far, in order: its accounting history."""
        return [entry.release() for entry in self.entries() if entry.who == who]

    def record_release(
        self,
        who: str,
        release: Release,
        *,
        delta: float,
        budget: PrivacyBudget | None = None,
        **fields: Any,
    ) -> LedgerEntry:
        """Account, check the budget and append one release; call before it leaves.

        ``fields`` are the other :class:`LedgerEntry` fields (run_id, round, unit,
        mechanism, clip_norm). Raises :class:`BudgetExceededError`, writing nothing, when
        the release would take ``who`` past ``budget``.
        """
        if budget is not None and budget.delta != delta:
            raise ValueError(f"delta {delta:g} differs from the budget's delta {budget.delta:g}")
        epsilon = epsilon_after(self.releases(who), release, delta)
        if budget is not None and epsilon > budget.epsilon:
            raise BudgetExceededError(
                f"{who}: this release would bring epsilon to {epsilon:.4g}, "
                f"over the budget of {budget.epsilon:g} (delta {budget.delta:g})"
            )
        entry = LedgerEntry(
            who=who,
            noise_multiplier=release.noise_multiplier,
            sampling_rate=release.sampling_rate,
            steps=release.steps,
            delta=delta,
            epsilon=epsilon,
            accountant="rdp",
            budget_epsilon=budget.epsilon if budget else None,
            time=time.time(),
            **fields,
        )
        self.append(entry)
        return entry


def _fsync_folder(folder: Path) -> None:
    """Make a new file's directory entry durable too."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class PrivacyBudget:
    """The most a party may spend: (epsilon, delta)-DP over all its releases."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not 0 < number_or_nan(self.epsilon) < math.inf:
            raise ValueError(f"budget epsilon must be a positive number, got {self.epsilon!r}")
        if not 0.0 < number_or_nan(self.delta) < 1.0:
            raise ValueError(f"budget delta must be in (0, 1), got {self.delta!r}")


def epsilon_after(history: Sequence[Release], next_release: Release, delta: float) -> float:
    """Cumulative RDP epsilon if ``next_release`` followed ``history``."""
    return rdp_epsilon([*history, next_release], delta)


def would_exceed(budget: PrivacyBudget, history: Sequence[Release], next_release: Release) -> bool:
    """Whether ``next_release`` would take a party with ``history`` past ``budget``."""
    return epsilon_after(history, next_release, budget.delta) > budget.epsilon
