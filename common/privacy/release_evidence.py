"""Noise evidence of a run folder: the noise its releases carry, measured from them.

The ledger is written by the party being audited: a server that rewrote it (say, every
noise multiplier doubled, epsilons and hash chain recomputed) would be certified a much
smaller epsilon. So the audit also measures the noise in what the run released
(:mod:`common.privacy.noise_evidence`) and fails when it is smaller than the server's
ledger claims:

- ``statistics.npz`` (mechanism ``dp-statistics``): its recorded noise multipliers must
  compose to the entry's, and each statistic's pure-noise values (cells no user reaches
  and its witness, :meth:`~common.privacy.statistics.DPStatistics.pure_noise`) must carry
  ``z_i x clip_norm``;
- ``checkpoint.pt`` (mechanism ``dp-fedavg``): each recorded round's noise witness must
  carry ``noise_multiplier x clip_norm / (population x sampling_rate)``, the noise of
  that round's mean update.

The false-alarm rate is :data:`~common.privacy.noise_evidence.FALSE_ALARM_RATE` per
release (shared equally by a release's statistics). What it proves: the released files
carry at least the noise the ledger claims, so a ledger rewritten after the files left
cannot certify more noise than they hold. What it cannot: that the model coordinates got
the same noise as the witness (a dishonest server drawing honest witnesses and too
little noise elsewhere passes), nor anything about files forged together with the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.privacy.ledger import LedgerEntry, LedgerError, read_ledger_file
from common.privacy.ledger_audit import SERVER
from common.privacy.ledger_heads import LEDGER_FOLDER, SERVER_LEDGER, read_json_object
from common.privacy.noise_evidence import FALSE_ALARM_RATE, NoiseMeasurement, measure_noise
from common.privacy.statistics import (
    STATISTICS,
    STATISTICS_FILE,
    STATISTICS_MECHANISM,
    DPStatistics,
    joint_noise_multiplier,
)

CHECKPOINT = "checkpoint.pt"  # the released model of a DP run (server/run_recorder.py)
MODEL_MECHANISM = "dp-fedavg"


@dataclass
class NoiseEvidence:
    """What the measurement found: failures (one sentence each), notes, releases measured."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # the report's evidence table

    def add(self, where: str, round_: int, quantity: str, measurement: NoiseMeasurement) -> None:
        """Record one measurement as a row of the audit report's ``evidence``."""
        self.rows.append({
            "who": where, "round": round_, "quantity": quantity,
            "claimed": measurement.claimed_std, "measured": measurement.measured_std,
            "low": 0.0, "high": measurement.upper_std,
            "level": f"one-sided, false alarm {measurement.alpha:.0e}",
            "agrees": measurement.passed,
        })  # fmt: skip


def run_noise_evidence(run: Path) -> NoiseEvidence:
    """Measure every noised server release of this run (its folder's name or summary's id)."""
    evidence = NoiseEvidence()
    ledger = run / LEDGER_FOLDER / SERVER_LEDGER
    if not ledger.is_file():
        return evidence
    summary = _summary(run)
    run_id = str(summary.get("run_id") or run.name)
    entries = [
        entry
        for entry in read_ledger_file(ledger).entries
        if entry.who == SERVER and entry.run_id == run_id and entry.noise_multiplier > 0
    ]
    statistics = [e for e in entries if e.mechanism == STATISTICS_MECHANISM]
    rounds = [e for e in entries if e.mechanism == MODEL_MECHANISM]
    for name, recorded in ((STATISTICS_FILE, statistics), (CHECKPOINT, rounds)):
        if recorded and not (run / name).is_file():
            evidence.notes.append(
                f"{run / name} is missing: the noise of {len(recorded)} recorded release(s) "
                f"is not measured (nothing of them is in the run folder)"
            )
    if statistics and (run / STATISTICS_FILE).is_file():
        statistics_evidence(run / STATISTICS_FILE, statistics[-1], evidence)
    if rounds and (run / CHECKPOINT).is_file():
        model_evidence(run / CHECKPOINT, rounds, _lost_rounds(summary), evidence)
    if evidence.measured and not evidence.failures:
        evidence.notes.append(
            f"noise evidence: {evidence.measured} release(s) carry at least the noise the "
            f"ledger claims, measured from the released files (one-sided chi-square, "
            f"false-alarm rate {FALSE_ALARM_RATE:.0e} per release)"
        )
    return evidence


def statistics_evidence(path: Path, entry: LedgerEntry, evidence: NoiseEvidence) -> None:
    """The statistics file's recorded noise and measured noise against its ledger entry."""
    try:
        stats = DPStatistics.load(path)
    except ValueError as error:
        evidence.failures.append(f"{error}: its noise cannot be measured")
        return
    joint = joint_noise_multiplier(stats.noise_multipliers)
    if not math.isclose(joint, entry.noise_multiplier, rel_tol=1e-6):
        recorded = ", ".join(f"{n} {z:.4g}" for n, z in stats.noise_multipliers.items())
        evidence.failures.append(
            f"{path} records noise multipliers {recorded} (jointly {joint:.4g}), but its "
            f"ledger entry (round {entry.round}) claims {entry.noise_multiplier:.4g}"
        )
    if joint <= 0:
        return
    missing = [name for name in STATISTICS if name not in stats.noise_witness]
    if missing:
        evidence.failures.append(
            f"{path} carries no noise witness for {', '.join(missing)}: its noise cannot be "
            f"measured"
        )
        return
    evidence.measured += 1
    measured = statistics_measurements(stats, entry.noise_multiplier, entry.clip_norm)
    for name, measurement in measured.items():
        evidence.add(path.name, entry.round, f"{name} noise std", measurement)
        if not measurement.passed:
            evidence.failures.append(
                f"{path}: {name} carries less noise than its ledger entry (round "
                f"{entry.round}) claims: {measurement.describe()}"
            )


def statistics_measurements(
    stats: DPStatistics, claimed_multiplier: float, clip_norm: float
) -> dict[str, NoiseMeasurement]:
    """Each statistic's pure noise against a claimed joint noise multiplier.

    The claim is split between the statistics as the file records them (their joint
    multiplier scaled to the claimed one); the false-alarm rate is shared equally.
    """
    scale = claimed_multiplier / joint_noise_multiplier(stats.noise_multipliers) * clip_norm
    alpha = FALSE_ALARM_RATE / len(STATISTICS)
    return {
        name: measure_noise(stats.pure_noise(name), stats.noise_multipliers[name] * scale, alpha)
        for name in STATISTICS
    }


def round_noise_std(
    noise_multiplier: float, clip_norm: float, population: int, sampling_rate: float
) -> float:
    """The noise std of a DP-FedAvg round's mean update, hence of its witness."""
    return noise_multiplier * clip_norm / (population * sampling_rate)


def model_evidence(
    path: Path, rounds: Sequence[LedgerEntry], lost: set[int], evidence: NoiseEvidence
) -> None:
    """Each recorded round's noise witness in the released checkpoint against its entry."""
    import torch

    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw = raw if isinstance(raw, dict) else {}
    saved = int(raw.get("round", 0))
    witness: Mapping[Any, Any] = raw.get("noise_witness") or {}
    where = f"{path.name} (round {saved})"
    unmeasured = []
    for entry in rounds:
        values = witness.get(entry.round)
        if values is None:
            unmeasured.append(entry.round)
            continue
        claimed = round_noise_std(
            entry.noise_multiplier, entry.clip_norm, entry.population, entry.sampling_rate
        )
        measurement = measure_noise(np.asarray(values), claimed)
        evidence.measured += 1
        evidence.add(path.name, entry.round, "mean update noise std", measurement)
        if not measurement.passed:
            evidence.failures.append(
                f"{path}: round {entry.round} carries less noise than its ledger entry "
                f"claims: {measurement.describe()}"
            )
    _unmeasured_rounds(where, unmeasured, saved, lost, bool(witness), evidence)


def _unmeasured_rounds(
    where: str, rounds: list[int], saved: int, lost: set[int], any_witness: bool,
    evidence: NoiseEvidence,
) -> None:  # fmt: skip
    """Rounds without a witness: never saved (a crash) is a note, anything else a failure."""
    unsaved = [r for r in rounds if r > saved or r in lost]
    if unsaved:
        evidence.notes.append(
            f"{where} holds no noise witness for round(s) {_listed(unsaved)}: recorded, "
            f"but a crash came before their model was saved; their noise is not measured"
        )
    missing = [r for r in rounds if r not in unsaved]
    if missing:
        why = "no noise witness at all" if not any_witness else "no noise witness"
        evidence.failures.append(
            f"{where} carries {why} for round(s) {_listed(missing)}: the noise their "
            f"ledger entries claim cannot be measured"
        )


def _listed(rounds: list[int]) -> str:
    shown = ", ".join(str(r) for r in rounds[:8])
    return shown + (f" and {len(rounds) - 8} more" if len(rounds) > 8 else "")


def _summary(run: Path) -> dict[str, Any]:
    """summary.json, or nothing when the run did not finish (the audit says so)."""
    try:
        return read_json_object(run / "summary.json") if (run / "summary.json").is_file() else {}
    except LedgerError:
        return {}


def _lost_rounds(summary: Mapping[str, Any]) -> set[int]:
    """Rounds recorded before a crash but never saved, as each resume listed them."""
    lost: set[int] = set()
    for resume in summary.get("resumed") or []:
        if isinstance(resume, dict):
            first, last = int(resume.get("from_round", 0)), int(resume.get("continued_after", 0))
            lost.update(range(first + 1, last + 1))
    return lost
