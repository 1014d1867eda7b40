"""Tests for common.privacy.ledger: durable concurrent appends, strict reading, budgets."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.privacy.accounting import PldComposer, Release, pld_epsilon, rdp_epsilon
from common.privacy.ledger import (
    GENESIS,
    BudgetExceededError,
    LedgerEntry,
    LedgerError,
    PrivacyBudget,
    PrivacyLedger,
    epsilon_after,
    line_hash,
    read_ledger,
    read_ledger_file,
    would_exceed,
)
from common.privacy.ledger_audit import chain_failures
from tests.helpers import PROJECT_ROOT

DELTA = 1e-5


def independent_pld(releases: list[Release], delta: float) -> float:
    """PLD epsilon by a fresh composer, independent of the ledger's shared caches."""
    composer = PldComposer()
    state = composer.empty()
    for release in releases:
        state = composer.extend(state, release)
    return composer.epsilon(state, delta)


# A child process that appends entries numbered 0, 1, ... (forever when count < 0).
WRITER = """
import sys
from pathlib import Path
from typing import Any
from common.privacy.ledger import LedgerEntry, PrivacyLedger
path, who, count, pad = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ledger, number = PrivacyLedger(path), 0
while count < 0 or number < count:
    ledger.append(LedgerEntry(run_id="r" + "x" * pad, round=number, who=who, unit="user",
        mechanism="dp-sgd", noise_multiplier=1.0, sampling_rate=0.1, steps=10, delta=1e-5,
        epsilon=0.5, accountant="rdp", clip_norm=1.0, budget_epsilon=None, time=0.0,
        population=943))
    number += 1
"""


def make_entry(who: str = "node-1", round_number: int = 1, **changes: object) -> LedgerEntry:
    """A valid entry; ``changes`` override fields."""
    fields: dict[str, object] = {
        "run_id": "run-a",
        "round": round_number,
        "who": who,
        "unit": "user",
        "mechanism": "dp-sgd",
        "noise_multiplier": 1.1,
        "sampling_rate": 0.05,
        "steps": 20,
        "delta": DELTA,
        "epsilon": 0.8,
        "accountant": "rdp",
        "clip_norm": 1.0,
        "budget_epsilon": 3.0,
        "time": 1_700_000_000.0,
        "population": 943,
    }
    fields.update(changes)
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def _writer(path: Path, who: str, count: int, pad: int = 0) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    arguments = [sys.executable, "-c", WRITER, str(path), who, str(count), str(pad)]
    return subprocess.Popen(arguments, env=environment)


def test_appended_entries_read_back_in_order(tmp_path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger" / "clients.jsonl")
    written = [make_entry("a", 1), make_entry("b", 1, epsilon=float("inf")), make_entry("a", 2)]
    # Execute
    chained = [ledger.append(entry) for entry in written]
    # Assert
    assert ledger.entries() == chained
    assert [dataclasses.replace(e, prev_hash=GENESIS) for e in chained] == written
    assert ledger.releases("a") == [Release(1.1, 0.05, 20)] * 2
    assert ledger.path.read_text().count("\n") == 3
    lines = ledger.path.read_bytes().splitlines()
    assert [e.prev_hash for e in chained] == [GENESIS, *map(line_hash, lines[:2])]


def test_two_processes_appending_at_once_leave_well_formed_lines(tmp_path: Path) -> None:
    # Prepare: lines of about 5 kB, beyond the 4 kB a pipe would write atomically
    path = tmp_path / "shared.jsonl"
    # Execute
    writers = [_writer(path, who, 150, pad=5000) for who in ("first", "second")]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    # Assert
    ledger = read_ledger_file(path)
    assert len(ledger.entries) == 300
    for who in ("first", "second"):
        assert [e.round for e in ledger.entries if e.who == who] == list(range(150))
    assert chain_failures(ledger) == []  # flock: no two appends chained to the same head


def test_a_process_killed_mid_run_leaves_a_readable_ledger(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "ledger.jsonl"
    writer = _writer(path, "node-9", -1)
    deadline = time.monotonic() + 120
    while (not path.exists() or path.read_bytes().count(b"\n") < 30) and writer.poll() is None:
        assert time.monotonic() < deadline, "the writer never appended 30 entries"
        time.sleep(0.05)
    # Execute
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    # Assert
    ledger = read_ledger_file(path)
    assert writer.returncode == -signal.SIGKILL
    assert len(ledger.entries) >= 30
    assert [e.round for e in ledger.entries] == list(range(len(ledger.entries)))
    assert chain_failures(ledger) == []


def test_a_truncated_last_line_is_skipped_and_sealed_by_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a crash mid-write left half a record without its newline
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    first = ledger.append(make_entry(round_number=1))
    with ledger.path.open("a") as handle:
        handle.write(make_entry(round_number=2).to_json()[:57])
    # Execute
    with caplog.at_level(logging.WARNING):
        before = read_ledger(ledger.path)
    after_crash = ledger.append(make_entry(round_number=2, epsilon=1.2))
    # Assert
    assert before == [first]
    assert "ledger.jsonl, line 2: skipped a record cut short by a crash" in caplog.text
    assert read_ledger(ledger.path) == [first, after_crash]
    assert after_crash.prev_hash == line_hash(first.to_json().encode())  # chains past the cut
    assert chain_failures(read_ledger_file(ledger.path)) == []


def test_every_cut_of_a_record_is_recognised_as_truncated(tmp_path: Path) -> None:
    # Prepare: the id holds a "}" so that some cuts end with one
    first, cut_one = make_entry(), make_entry(who="n}1", round_number=2).to_json()
    path = tmp_path / "ledger.jsonl"
    # Execute / Assert: each cut-off last line is skipped, never an error
    for length in range(1, len(cut_one)):
        path.write_text(first.to_json() + "\n" + cut_one[:length])
        assert read_ledger(path) == [first], cut_one[:length]


DROP = object()


def _edited(**changes: object) -> str:
    """A valid entry's JSON line with fields changed (or dropped)."""
    record = {**json.loads(make_entry().to_json()), **changes}
    return json.dumps({key: value for key, value in record.items() if value is not DROP})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"run_id": "a", "round": 1} trailing', "line 2: not JSON (Extra data)"),
        ("[1, 2]", "line 2: a ledger line must be a JSON object"),
        (_edited(steps="20"), "line 2: field 'steps' must be an integer >= 1, got '20'"),
        (_edited(time=DROP), "line 2: field 'time' is missing"),
        (_edited(note="x"), "line 2: field 'note' is not a ledger field"),
        (_edited(unit="item"), "line 2: field 'unit' must be one of user, window, got 'item'"),
        (_edited(delta=2.0), "line 2: field 'delta' must be in (0, 1), got 2.0"),
        (_edited(epsilon=-1), "line 2: field 'epsilon' must be >= 0 (Infinity without noise)"),
    ],
)
def test_a_malformed_line_names_file_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    # Prepare: the bad line sits between two good ones
    good = make_entry().to_json()
    path = tmp_path / "server.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    # Execute / Assert
    with pytest.raises(LedgerError) as error:
        read_ledger(path)
    assert str(error.value).startswith(f"{path}, {message}")


def test_a_missing_ledger_file_is_a_ledger_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="ledger file not found"):
        read_ledger(tmp_path / "nope.jsonl")


def test_record_release_refuses_over_budget_and_writes_nothing(tmp_path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    budget = PrivacyBudget(epsilon=2.0, delta=DELTA)
    release = Release(2.0, 0.05, 20)  # PLD epsilon 0.51 after one round, 1.996 after 16
    fields: dict[str, Any] = {
        "run_id": "r",
        "unit": "user",
        "mechanism": "dp-sgd",
        "clip_norm": 1.0,
        "population": 943,
    }
    # Execute
    recorded = []
    with pytest.raises(BudgetExceededError, match="n1 has spent epsilon .* of 2 "):
        for number in range(1, 100):
            recorded.append(
                ledger.record_release(
                    "n1", release, delta=DELTA, budget=budget, round=number, **fields
                )
            )
    # Assert
    assert len(recorded) == 16  # RDP, which recorded before PLD, allowed 13
    assert ledger.entries() == recorded
    assert all(entry.accountant == "pld" for entry in recorded)
    assert recorded[-1].epsilon == pytest.approx(independent_pld([release] * 16, DELTA))
    assert independent_pld([release] * 17, DELTA) > 2.0
    assert rdp_epsilon([release] * 16, DELTA) > 2.0  # what PLD calibration gains


@pytest.mark.parametrize(
    ("epsilon", "delta", "message"),
    [
        (0.0, DELTA, "budget epsilon must be a positive number"),
        (float("inf"), DELTA, "budget epsilon must be a positive number"),
        (1.0, 1.0, r"budget delta must be in \(0, 1\)"),
    ],
)
def test_privacy_budget_is_validated(epsilon: float, delta: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrivacyBudget(epsilon, delta)


def test_epsilon_after_adds_the_next_release() -> None:
    history = [Release(1.0, 0.1, 10)]
    assert epsilon_after(history, Release(1.0, 0.1, 5), DELTA) == pytest.approx(
        pld_epsilon([Release(1.0, 0.1, 15)], DELTA), rel=1e-6
    )


round_asks = st.tuples(
    st.floats(min_value=0.6, max_value=4.0),
    st.floats(min_value=0.01, max_value=1.0),
    st.integers(min_value=1, max_value=60),
)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(asks=st.lists(round_asks, min_size=1, max_size=12), budget_epsilon=st.floats(0.5, 4.0))
def test_a_budgeted_client_never_exceeds_and_trains_whenever_it_can(
    asks: list[tuple[float, float, int]], budget_epsilon: float
) -> None:
    budget = PrivacyBudget(budget_epsilon, DELTA)
    fields: dict[str, Any] = {
        "run_id": "r",
        "unit": "user",
        "mechanism": "dp-sgd",
        "clip_norm": 1.0,
        "population": 943,
    }
    with tempfile.TemporaryDirectory() as folder:
        ledger = PrivacyLedger(Path(folder) / "ledger.jsonl")
        trained: list[Release] = []
        for number, ask in enumerate(asks, start=1):
            release = Release(*ask)
            if would_exceed(budget, ledger.releases("c"), release):
                # Refused: checked independently of the policy, training would exceed.
                assert independent_pld([*trained, release], DELTA) > budget.epsilon
                continue
            ledger.record_release("c", release, delta=DELTA, budget=budget, round=number, **fields)
            trained.append(release)
        entries = ledger.entries()
    assert [entry.release() for entry in entries] == trained
    assert all(entry.epsilon <= budget.epsilon for entry in entries)
    for count, entry in enumerate(entries, start=1):
        assert entry.epsilon == pytest.approx(independent_pld(trained[:count], DELTA), rel=1e-12)
