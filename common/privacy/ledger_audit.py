"""Audit of privacy ledgers: recompute every recorded epsilon, check chains, state guarantees.

Each ledger file must be one unbroken hash chain (no line edited, deleted, duplicated
or reordered). For every party (``who``) the audit replays its releases in ledger order
and, after each entry, recomputes the cumulative epsilon from the recorded parameters
with both accountants: the one the entry names (``accountant``: PLD for new entries,
RDP for entries written before PLD) and the other one as a cross-check, reported. The
check is one-sided: an entry fails when its recorded epsilon is below its own
accountant's recomputation (beyond :data:`FLOAT_SLACK` for RDP, :data:`PLD_SLACK` for
PLD; an RDP entry also below PLD, as before), when it exceeds its budget, when its delta
exceeds ``1 / (10 x population)``, or when its rounds repeat or go backwards (and, for
the server, skip one). An overstated epsilon is conservative and passes; the guarantee
certified is the larger of recorded and recomputed (by the entry's accountant). Any
release made with insecure reproducible noise fails the audit: such a run is NOT
PRIVATE. Parties are replayed in sorted order of their histories, so a prefix shared
by many parties (identical rounds) is composed once. The cross-checks against a run
folder's summary, metrics and checkpoints are in :mod:`common.privacy.run_audit`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.privacy.accounting import PldComposer, Release, epsilon_from_rdp, rdp_curve
from common.privacy.calibration import delta_problem
from common.privacy.guarantee_words import AGAINST, NEIGHBOURS, PROTECTED
from common.privacy.ledger import (
    COMPOSABLE_MECHANISMS,
    GENESIS,
    INSECURE_REPRODUCIBLE,
    LedgerEntry,
    LedgerError,
    LedgerFile,
    PrivacyBudget,
    read_ledger_file,
    would_exceed,
)

SERVER = "server"
FLOAT_SLACK = 1e-9  # relative: the same RDP sums in another order, nothing more
# Relative slack for a recorded PLD epsilon. PLD with a fixed discretisation is
# deterministic: the ledger composes exactly as the audit replays and matches it to float
# rounding; composing the same releases grouped differently (one release of n steps vs n
# releases of one) moved epsilon by at most ~2e-8 in our measurements. 1e-6 absorbs that
# and is far below the discretisation's own pessimism (1e-3 per privacy loss), so an
# understated epsilon cannot hide in it.
PLD_SLACK = 1e-6
NOT_PRIVATE = "NOT PRIVATE"


@dataclass(frozen=True)
class CheckedEntry:
    """One ledger entry with where it came from and both recomputed epsilons."""

    source: str
    entry: LedgerEntry
    rdp_epsilon: float
    pld_epsilon: float

    @property
    def recomputed(self) -> float:
        """The epsilon the entry's own accountant recomputes from its parameters."""
        return self.pld_epsilon if self.entry.accountant == "pld" else self.rdp_epsilon

    @property
    def cross_check(self) -> float:
        """The other accountant's epsilon (RDP for a PLD entry, PLD for an RDP one)."""
        return self.rdp_epsilon if self.entry.accountant == "pld" else self.pld_epsilon

    @property
    def spent(self) -> float:
        """The epsilon the audit certifies: the larger of recorded and recomputed."""
        return max(self.entry.epsilon, self.recomputed)


@dataclass
class PartyAudit:
    """All entries of one party, in the order its releases composed."""

    who: str
    checked: list[CheckedEntry] = field(default_factory=list)
    next_epsilon: float | None = None  # after one more release like the last (the audit's)

    @property
    def last(self) -> CheckedEntry:
        """The party's latest entry: its guarantee so far."""
        return self.checked[-1]

    def releases(self) -> list[Release]:
        """The party's accounting history."""
        return [item.entry.release() for item in self.checked]

    def at_budget(self) -> bool:
        """Whether one more release like its last one would exceed its budget.

        By the budget check's own accountant; from the audit's replay when it has one.
        """
        entry = self.last.entry
        if entry.budget_epsilon is None:
            return False
        if self.next_epsilon is not None:
            return self.next_epsilon > entry.budget_epsilon
        budget = PrivacyBudget(entry.budget_epsilon, entry.delta)
        return would_exceed(budget, self.releases(), entry.release())


@dataclass
class AuditReport:
    """Everything the audit found; ``passed`` when there is no failure.

    ``evidence`` (noise measured against the noise claimed) and ``receipts`` (parties'
    receipts checked against the ledger) are filled by the checks that make them; their
    dict shapes are in :mod:`common.privacy.html_report`. A check that finds a problem
    also adds it to ``failures``.
    """

    ledgers: list[str]
    parties: list[PartyAudit]
    skipped_lines: int
    failures: list[str]
    notes: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every recorded epsilon was confirmed and every budget kept."""
        return not self.failures

    @property
    def not_private(self) -> bool:
        """Whether some release used insecure reproducible noise (never certified)."""
        return any(failure.startswith(NOT_PRIVATE) for failure in self.failures)


def find_ledgers(path: Path) -> list[Path]:
    """A ledger file itself, or a run folder's ``ledger/*.jsonl`` and a node's ``ledger.jsonl``."""
    if not path.exists():
        raise LedgerError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    found = sorted((path / "ledger").glob("*.jsonl"))
    if (path / "ledger.jsonl").is_file():
        found.append(path / "ledger.jsonl")
    if not found:
        raise LedgerError(f"{path}: no ledger found (looked for ledger/*.jsonl and ledger.jsonl)")
    return found


def chain_failures(ledger: LedgerFile) -> list[str]:
    """Where a ledger file's hash chain breaks: edited, deleted, duplicated, reordered lines."""
    failures: list[str] = []
    seen: dict[str, int] = {}
    for index, (entry, number, digest) in enumerate(
        zip(ledger.entries, ledger.line_numbers, ledger.hashes, strict=True)
    ):
        where = f"{ledger.path}, line {number}"
        expected = ledger.hashes[index - 1] if index else GENESIS
        if digest in seen:
            failures.append(f"{where}: entry {index + 1} duplicated (same as entry {seen[digest]})")
        elif entry.prev_hash != expected:
            previous = f"entry {index}" if index else "the genesis value (the start was cut)"
            failures.append(
                f"{where}: entry {index + 1} does not chain to {previous}: a line was "
                f"edited, removed or moved"
            )
        seen.setdefault(digest, index + 1)
    return failures


def _read_parties(
    paths: list[Path],
) -> tuple[dict[str, list[tuple[str, LedgerEntry]]], int, list[str]]:
    """Entries grouped by party, each party's in append order; lines skipped; chain breaks."""
    located: dict[str, list[tuple[float, int, int, str, LedgerEntry]]] = defaultdict(list)
    skipped = 0
    broken: list[str] = []
    for index, path in enumerate(paths):
        ledger = read_ledger_file(path)
        skipped += ledger.skipped
        broken.extend(chain_failures(ledger))
        for number, entry in zip(ledger.line_numbers, ledger.entries, strict=True):
            source = f"{path}, line {number}"
            located[entry.who].append((entry.time, index, number, source, entry))
    if not located:
        raise LedgerError(f"{', '.join(map(str, paths))}: the ledger holds no entries")
    parties = {}
    for who, items in located.items():
        if len({index for _, index, _, _, _ in items}) > 1:  # merge files by time
            items.sort(key=lambda item: item[:3])
        parties[who] = [(source, entry) for *_, source, entry in items]
    return parties, skipped, broken


@dataclass
class _Step:
    """One release along a replayed history, with everything composed up to it."""

    release: Release
    rdp_curve: np.ndarray
    pld_state: Any
    epsilons: dict[float, tuple[float, float]] = field(default_factory=dict)


class _Replay:
    """Cumulative RDP and PLD epsilons along parties' histories, reusing shared prefixes."""

    def __init__(self) -> None:
        self.pld = PldComposer()
        self.path: list[_Step] = []

    def epsilons(self, history: list[Release], deltas: list[float]) -> list[tuple[float, float]]:
        """(RDP, PLD) epsilon after each release of ``history``, at each entry's delta."""
        common = 0
        while common < min(len(self.path), len(history)):
            if self.path[common].release != history[common]:
                break
            common += 1
        del self.path[common:]
        for release in history[common:]:
            curve = rdp_curve(release) + (self.path[-1].rdp_curve if self.path else 0.0)
            state = self.path[-1].pld_state if self.path else self.pld.empty()
            self.path.append(_Step(release, curve, self.pld.extend(state, release)))
        result = []
        for step, delta in zip(self.path, deltas, strict=True):
            if delta not in step.epsilons:
                step.epsilons[delta] = (
                    epsilon_from_rdp(step.rdp_curve, delta),
                    self.pld.epsilon(step.pld_state, delta),
                )
            result.append(step.epsilons[delta])
        return result


def _history_key(items: list[tuple[str, LedgerEntry]]) -> list[tuple[float, float, int]]:
    """A sortable form of a party's history: neighbours in this order share prefixes."""
    return [(e.noise_multiplier, e.sampling_rate, e.steps) for _, e in items]


def _entry_failures(item: CheckedEntry) -> list[str]:
    """What is wrong with one entry, in words naming where it is (one-sided checks)."""
    entry, recorded = item.entry, item.entry.epsilon
    where = f"{item.source}: {entry.who} round {entry.round}"
    failures = []
    slack = PLD_SLACK if entry.accountant == "pld" else FLOAT_SLACK
    if recorded < item.recomputed * (1 - slack):
        failures.append(
            f"{where}: recorded epsilon {recorded:.6g} is below the {item.recomputed:.6g} "
            f"{entry.accountant.upper()} recomputes from the recorded parameters: the "
            f"epsilon is understated"
        )
    if entry.accountant == "rdp" and recorded < item.pld_epsilon * (1 - FLOAT_SLACK):
        failures.append(
            f"{where}: recorded epsilon {recorded:.6g} is below the independent PLD epsilon "
            f"{item.pld_epsilon:.6g}: the recorded guarantee is not supported"
        )
    budget = entry.budget_epsilon
    if budget is not None and item.spent > budget * (1 + FLOAT_SLACK):
        failures.append(f"{where}: epsilon {item.spent:.6g} exceeds the budget {budget:g}")
    problem = delta_problem(entry.delta, entry.population)
    if problem:
        failures.append(f"{where}: {problem}, the users protected")
    return failures


def _round_failures(party: PartyAudit) -> list[str]:
    """Rounds per run: unique and increasing; the server's also contiguous."""
    failures = []
    last: dict[str, CheckedEntry] = {}
    for item in party.checked:
        entry, before = item.entry, last.get(item.entry.run_id)
        last[entry.run_id] = item
        if before is None:
            continue
        where = f"{item.source}: {party.who}"
        if entry.round == before.entry.round:
            failures.append(f"{where} round {entry.round} recorded twice (run {entry.run_id})")
        elif entry.round < before.entry.round:
            failures.append(f"{where} round {entry.round} after round {before.entry.round}")
        elif party.who == SERVER and entry.round > before.entry.round + 1:
            failures.append(
                f"{where} rounds jump from {before.entry.round} to {entry.round}: round "
                f"{before.entry.round + 1} is not in the ledger"
            )
    return failures


def _party_failures(party: PartyAudit) -> list[str]:
    """One neighbouring relation and mechanism per party, rounds in order, secure noise."""
    failures = []
    for name in ("unit", "mechanism"):
        values = sorted({getattr(item.entry, name) for item in party.checked})
        if name == "mechanism" and any(set(values) <= group for group in COMPOSABLE_MECHANISMS):
            continue  # user-level statistics and DP-FedAvg rounds: one user-level guarantee
        if len(values) > 1:
            failures.append(
                f"{party.who}: entries mix {name}s {' and '.join(values)}; one guarantee "
                f"cannot cover them"
            )
    failures.extend(_round_failures(party))
    insecure = [item for item in party.checked if item.entry.randomness == INSECURE_REPRODUCIBLE]
    if insecure:
        failures.append(
            f"{NOT_PRIVATE}: {len(insecure)} release(s) of {party.who} (first {insecure[0].source})"
            f" used insecure-reproducible noise, a test setting anyone with the seed can "
            f"subtract; no guarantee holds"
        )
    return failures


def audit_ledgers(paths: list[Path]) -> AuditReport:
    """Replay and check every entry of the given ledger files."""
    grouped, skipped, failures = _read_parties(paths)
    replay = _Replay()
    order = sorted(grouped, key=lambda who: _history_key(grouped[who]))
    parties = []
    for who in order:
        items = grouped[who]
        history = [entry.release() for _, entry in items]
        deltas = [entry.delta for _, entry in items]
        # with a budget, one more release like the last (at_budget): one more PLD step
        more = int(items[-1][1].budget_epsilon is not None)
        epsilons = replay.epsilons(history + history[-1:] * more, deltas + deltas[-1:] * more)
        party = PartyAudit(who, next_epsilon=epsilons.pop()[1] if more else None)
        for (source, entry), (rdp, pld) in zip(items, epsilons, strict=True):
            checked = CheckedEntry(source, entry, rdp, pld)
            party.checked.append(checked)
            failures.extend(_entry_failures(checked))
        failures.extend(_party_failures(party))
        parties.append(party)
    parties.sort(key=lambda party: (party.who != SERVER, party.who))
    return AuditReport([str(p) for p in paths], parties, skipped, failures)


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def guarantees(report: AuditReport) -> list[dict[str, Any]]:
    """One plain-words guarantee per (mechanism, unit), with its epsilon(s) and delta."""
    groups: dict[tuple[str, str], list[PartyAudit]] = defaultdict(list)
    for party in report.parties:
        mechanisms = dict.fromkeys(item.entry.mechanism for item in party.checked)
        groups[(" + ".join(mechanisms), party.last.entry.unit)].append(party)
    statements = []
    for (mechanism, unit), parties in sorted(groups.items()):
        finals = [party.last.spent for party in parties]
        statements.append(
            {
                "mechanism": mechanism,
                "unit": unit,
                "parties": [party.who for party in parties],
                "epsilon": _summary(finals),
                "delta": max(party.last.entry.delta for party in parties),
                "neighbouring": NEIGHBOURS[unit],
                "protected": PROTECTED[unit],
                "against": AGAINST.get(mechanism, "no one: these mechanisms do not compose"),
            }
        )
    return statements


def client_distribution(report: AuditReport) -> dict[str, Any]:
    """Final epsilon over the parties that are not the server, and who is at budget."""
    clients = [party for party in report.parties if party.who != SERVER]
    if not clients:
        return {"count": 0}
    return {
        "count": len(clients),
        "epsilon": _summary([party.last.spent for party in clients]),
        "pld_epsilon": _summary([party.last.pld_epsilon for party in clients]),
        "rdp_epsilon": _summary([party.last.rdp_epsilon for party in clients]),
        "with_budget": sum(party.last.entry.budget_epsilon is not None for party in clients),
        "at_budget": sum(party.at_budget() for party in clients),
    }


def agreement(report: AuditReport) -> dict[str, float]:
    """How the PLD epsilon compares with the RDP one over all finite entries (the
    cross-check: whichever an entry records, the other recomputes it too)."""
    ratios = [
        item.pld_epsilon / item.rdp_epsilon
        for party in report.parties
        for item in party.checked
        if math.isfinite(item.rdp_epsilon) and item.rdp_epsilon > 0
    ]
    return _summary(ratios) if ratios else {}
