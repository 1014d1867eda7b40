"""Time the privacy audit on synthetic ledgers of the sizes our simulations produce.

    PYTHONPATH=. python benchmarks/privacy_audit.py

Two ledgers, written with the real accounting into a temporary folder:
- cross-silo: 10 nodes x 30 rounds of local DP-SGD (each node its own sampling rate)
  plus 30 server DP-FedAvg entries;
- cross-device: 943 users, each in about 20% of 30 rounds, each with its own sampling
  rate (its batch over its own windows).
Prints seconds per audit and the PLD/RDP agreement, and writes
``benchmarks/results/privacy_audit.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.privacy.accounting import Release, _unit_rdp_curve
from common.privacy.ledger import PrivacyLedger
from common.privacy.ledger_audit import agreement, audit_ledgers

DELTA = 1e-5
ROUNDS = 30


def write_party(ledger: PrivacyLedger, who: str, rounds: list[int], release: Release) -> None:
    """Append one party's releases with honest cumulative (PLD) epsilons."""
    mechanism = "dp-fedavg" if who == "server" else "dp-sgd"
    for count, number in enumerate(rounds):
        ledger.record_release(
            who, release, delta=DELTA, population=943, history=[release] * count,
            run_id="bench", round=number, unit="user", mechanism=mechanism, clip_norm=1.0,
        )  # fmt: skip


def cross_silo(folder: Path, rng: np.random.Generator) -> None:
    clients = PrivacyLedger(folder / "ledger" / "clients.jsonl")
    for node in range(10):
        rate = float(rng.uniform(0.01, 0.05))
        write_party(clients, f"node-{node}", list(range(1, ROUNDS + 1)), Release(1.1, rate, 20))
    server = PrivacyLedger(folder / "ledger" / "server.jsonl")
    write_party(server, "server", list(range(1, ROUNDS + 1)), Release(1.0, 0.1, 1))


def cross_device(folder: Path, rng: np.random.Generator) -> None:
    clients = PrivacyLedger(folder / "ledger" / "clients.jsonl")
    for user in range(943):
        rounds = [n for n in range(1, ROUNDS + 1) if rng.random() < 0.2] or [1]
        windows = int(rng.integers(20, 700))
        rate = min(1.0, 16 / windows)
        write_party(clients, f"user-{user}", rounds, Release(1.5, rate, round(1 / rate)))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    results = {}
    for name, build in (("cross-silo", cross_silo), ("cross-device", cross_device)):
        with tempfile.TemporaryDirectory() as folder:
            build(Path(folder), rng)
            paths = sorted((Path(folder) / "ledger").glob("*.jsonl"))
            _unit_rdp_curve.cache_clear()  # the audit starts cold, as a fresh command does
            started = time.perf_counter()
            report = audit_ledgers(paths)
            seconds = time.perf_counter() - started
        entries = sum(len(party.checked) for party in report.parties)
        results[name] = {
            "parties": len(report.parties),
            "entries": entries,
            "audit_seconds": round(seconds, 1),
            "passed": report.passed,
            "pld_over_rdp": agreement(report),
        }
        print(f"{name}: {len(report.parties)} parties, {entries} entries, {seconds:.1f} s, "
              f"passed {report.passed}, PLD/RDP {agreement(report)}")  # fmt: skip
    out = Path(__file__).parent / "results" / "privacy_audit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
