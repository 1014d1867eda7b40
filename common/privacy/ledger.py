"""The privacy ledger: an append-only, hash-chained JSON-lines record of every DP release.

Every party that releases something computed from private data (the server's noisy
aggregate, a node's DP-SGD update) appends one :class:`LedgerEntry` per release *before*
the release leaves, with the cumulative epsilon of all its releases so far. Each entry
carries the SHA-256 of the line before it (``prev_hash``; the first one chains to
:data:`GENESIS`), so an edited, deleted, duplicated or reordered line breaks the chain,
and a run's summary and checkpoints record the head hash and entry count at release
(:mod:`common.privacy.ledger_chain`), so a cut tail shows too. Appends hold an exclusive
``flock`` while they read the head and write one line, then ``fsync``: any number of
processes can share a file and a crash never loses a release that left. A run folder
keeps its ledgers in ``<run>/ledger/*.jsonl``; a deployed node keeps ``ledger.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.privacy.accounting import ACCOUNTANT, Release, number_or_nan
from common.privacy.budget import (
    BudgetExceededError,
    PrivacyBudget,
    check_budget,
    epsilon_after,
    would_exceed,
)
from common.privacy.calibration import check_delta, check_population
from common.privacy.signing import Signer, ledger_signing
from common.storage.chained_log import GENESIS, append_chained, line_hash

__all__ = [  # the budget names are re-exported: callers record and check in one place
    "GENESIS",
    "BudgetExceededError",
    "LedgerEntry",
    "LedgerError",
    "PrivacyBudget",
    "PrivacyLedger",
    "check_budget",
    "epsilon_after",
    "line_hash",
    "read_ledger",
    "read_ledger_file",
    "would_exceed",
]

logger = logging.getLogger("fedseqrec.privacy")

UNITS = ("user", "window")
MECHANISMS = ("dp-sgd", "dp-fedavg", "dp-statistics")
# mechanisms one party may mix: the server's user-level releases compose into one guarantee
COMPOSABLE_MECHANISMS = (frozenset({"dp-fedavg", "dp-statistics"}),)
ACCOUNTANTS = ("rdp", "pld")
LEGACY_ACCOUNTANT = "rdp"  # what an entry written before the field existed was computed with
OS_ENTROPY = "os-entropy"
INSECURE_REPRODUCIBLE = "insecure-reproducible"
RANDOMNESS = (OS_ENTROPY, INSECURE_REPRODUCIBLE)


class LedgerError(ValueError):
    """A ledger cannot be read; the message names the file, the line and the field."""


def _field_error(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"field '{name}' must be {expected}, got {value!r}")


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


@dataclass(frozen=True)
class LedgerEntry:
    """One release by one party (``who``: "server" or a node id) in one round.

    ``epsilon`` is the party's cumulative epsilon over all its releases so far, by
    ``accountant`` ("pld" for new entries; "rdp" for entries written before PLD, a line
    without the field included); ``population`` is the number of users protected (delta
    must stay at most ``1 / (10 x population)``); ``randomness`` says where the
    mechanism's noise and sampling came from; ``prev_hash`` links the entry to the line
    before it.
    """

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
    population: int
    randomness: str = OS_ENTROPY
    prev_hash: str = GENESIS

    def __post_init__(self) -> None:
        for name in ("run_id", "who"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _field_error(name, "a non-empty string", value)
        choices = {
            "unit": UNITS,
            "mechanism": MECHANISMS,
            "accountant": ACCOUNTANTS,
            "randomness": RANDOMNESS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise _field_error(name, "one of " + ", ".join(allowed), getattr(self, name))
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise _field_error("round", "an integer >= 0", self.round)
        try:
            self.release()
            check_population(self.population)
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
        if not _is_hash(self.prev_hash):
            raise _field_error("prev_hash", "64 lowercase hex digits (SHA-256)", self.prev_hash)

    def release(self) -> Release:
        """This entry's mechanism parameters as a :class:`Release`."""
        return Release(self.noise_multiplier, self.sampling_rate, self.steps)

    def to_json(self) -> str:
        """One JSON line (no newline); infinite epsilon is written as ``Infinity``."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELDS = tuple(field.name for field in dataclasses.fields(LedgerEntry))


def entry_from_json(text: str) -> LedgerEntry:
    """Parse one ledger line; a ValueError names the offending field.

    A line without ``accountant`` predates the field: its epsilon is RDP's.
    """
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("a ledger line must be a JSON object")
    record.setdefault("accountant", LEGACY_ACCOUNTANT)
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
    """A ledger file as read: entries, their line numbers and hashes, cut lines skipped."""

    path: Path
    entries: list[LedgerEntry]
    line_numbers: list[int]
    skipped: int
    hashes: list[str] = dataclasses.field(default_factory=list)
    lines: list[bytes] = dataclasses.field(default_factory=list)

    @property
    def head(self) -> str:
        """Hash of the last entry (the chain's head), :data:`GENESIS` when empty."""
        return self.hashes[-1] if self.hashes else GENESIS


def read_ledger(path: Path) -> list[LedgerEntry]:
    """All entries of a ledger file, in append order.

    A malformed line raises :class:`LedgerError` naming the file, line and field. A last
    line cut short by a crash mid-write is skipped with a warning (its release never
    left, since the append comes first), and so is such a line that a later append
    sealed with a newline.
    """
    return read_ledger_file(path).entries


def read_ledger_file(path: Path) -> LedgerFile:
    """Like :func:`read_ledger`, keeping line numbers, hashes and raw lines."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"{path}: ledger file not found") from None
    except IsADirectoryError:
        raise LedgerError(f"{path}: a folder, not a ledger file") from None
    ledger = LedgerFile(Path(path), [], [], 0)
    skipped = 0
    chunks = raw.split(b"\n")
    for number, chunk in enumerate(chunks, start=1):
        entry = _parse_line(path, number, chunk, last=number == len(chunks))
        if entry is None:
            skipped += bool(chunk.strip())
            continue
        ledger.entries.append(entry)
        ledger.line_numbers.append(number)
        ledger.hashes.append(line_hash(chunk))
        ledger.lines.append(chunk)
    return dataclasses.replace(ledger, skipped=skipped)


def _parse_line(path: Path, number: int, chunk: bytes, *, last: bool) -> LedgerEntry | None:
    """One line's entry; None for a blank line or a record cut short by a crash."""
    try:
        line = chunk.decode("utf-8")
    except UnicodeDecodeError:
        if not last:
            raise LedgerError(f"{path}, line {number}: not UTF-8 text") from None
        line = chunk.decode("utf-8", errors="replace")
    if not line.strip():
        return None
    try:
        return entry_from_json(line)
    except json.JSONDecodeError as error:
        if not _is_truncated(line):
            raise LedgerError(f"{path}, line {number}: not JSON ({error.msg})") from None
        logger.warning("%s, line %d: skipped a record cut short by a crash", path, number)
        return None
    except (TypeError, ValueError) as error:
        raise LedgerError(f"{path}, line {number}: {error}") from None


class PrivacyLedger:
    """An append-only, hash-chained ledger file shared safely by any number of processes."""

    def __init__(self, path: Path, signer: Signer | None = None) -> None:
        self.path = Path(path)
        self.signer = signer  # signs every entry into <ledger>.sig (common/privacy/signing)

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        """Chain ``entry`` to the file's head and write it durably; returns it as written.

        Under an exclusive ``flock``: read the head, write one line (a newline first if
        the file ends with a line cut short by a crash), ``fsync``; with a signer, its
        signature of the line goes to the sidecar before the lock is released.
        """
        written: list[LedgerEntry] = []

        def render(head: str) -> str:
            written.append(dataclasses.replace(entry, prev_hash=head))
            return written[-1].to_json()

        sign = ledger_signing(self.path, self.signer) if self.signer else None
        append_chained(self.path, render, sign)
        return written[-1]

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
        population: int,
        budget: PrivacyBudget | None = None,
        history: Sequence[Release] | None = None,
        randomness: str = OS_ENTROPY,
        **fields: Any,
    ) -> LedgerEntry:
        """Account, check delta and the budget, append one release; call before it leaves.

        The one way any party records a release. ``history`` is the party's releases so
        far (default: its entries in this ledger); ``fields`` are the other
        :class:`LedgerEntry` fields (run_id, round, unit, mechanism, clip_norm). Raises
        :class:`~common.privacy.calibration.DeltaError` or :class:`BudgetExceededError`,
        writing nothing, when delta is too large for ``population`` or the release would
        take ``who`` past ``budget``.
        """
        check_delta(delta, population)
        past = self.releases(who) if history is None else list(history)
        epsilon = check_budget(who, past, release, delta, budget)
        entry = LedgerEntry(
            who=who,
            noise_multiplier=release.noise_multiplier,
            sampling_rate=release.sampling_rate,
            steps=release.steps,
            delta=delta,
            epsilon=epsilon,
            accountant=ACCOUNTANT,
            budget_epsilon=budget.epsilon if budget else None,
            time=time.time(),
            population=population,
            randomness=randomness,
            **fields,
        )
        return self.append(entry)
