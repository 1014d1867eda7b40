"""Restore a killed run in its own folder (run-config ``resume-from``), in the ServerApp.

:func:`resume_run` checks the folder again (:mod:`server.resume.preflight`: the launcher
did before starting anything) and reads the saved state (:mod:`server.resume.state`)
back into a new ServerApp started on the same run folder and config: the model and best
checkpoint of the last saved round, the RNG states and ``metrics.csv`` cut back to that
round's rows; :class:`server.resume.keeper.RoundStateKeeper` puts back the server
optimizer and the failure totals (which keep every attempt's failures).

The ledger rule: every ledger entry counts. A kill can land after a round's release was
recorded (the ledger comes first, DESIGN.md) and before its state was saved; that model
may have left, so its entry stays and its epsilon is spent. The resumed run trains on
from the last saved model but numbers its rounds after the last round any ledger of this
run records, so no round is released or recorded twice and no release is forgotten; the
rounds in between are listed as lost in ``summary.json``'s ``resumed``. Without a ledger
(no DP) nothing is lost: the run continues right after the saved round.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.federation.checkpoints import CheckpointError, load_checkpoint
from common.federation.config import FederatedConfig
from common.models import SequenceRecommender
from common.privacy.folder_checks import interrupted_writes
from common.privacy.ledger import read_ledger_file
from common.privacy.ledger_heads import LEDGER_FOLDER
from common.storage.run_folder import cut_csv_rows
from server.resume.preflight import check_accounts, check_saved_model, completed
from server.resume.state import (
    STATE_FOLDER,
    ResumeError,
    ServerState,
    keep_file,
    load_server_state,
    restore_random_states,
)
from server.resume.stops import stop_cause
from server.run_recorder import BEST_CHECKPOINT, CHECKPOINT, RunRecorder

logger = logging.getLogger("fedseqrec.server")
METRICS = "metrics.csv"
SUMMARY = "summary.json"
RESUME_KEY = "resume-from"


@dataclass(frozen=True)
class Resumption:
    """A saved state read back, and the Flower rounds already done before the kill."""

    state: ServerState
    skip_through: int  # Flower rounds 0..skip_through are done (or released): skipped


def run_config_of(config: FederatedConfig) -> dict[str, Any]:
    """The run config a state is saved with and compared against (``resume-from`` aside)."""
    settings = config.to_run_config()
    settings.pop(RESUME_KEY, None)
    return settings


def resume_run(
    config: FederatedConfig, model: SequenceRecommender, recorder: RunRecorder
) -> Resumption:
    """Load the state of ``resume-from`` into the model and recorder; repair the folder."""
    folder = Path(config.results_dir)
    _check_resumable(config, folder)
    state = load_server_state(folder)
    _check_same_run(config, state, folder, recorder.round_offset)
    check_saved_model(folder, state)  # the launcher checked all this before starting us
    check_accounts(folder, config.to_run_config(), state)
    try:
        checkpoint = load_checkpoint(folder / STATE_FOLDER / state.model_file)
    except CheckpointError as error:
        raise ResumeError(str(error)) from None
    model.load_state_dict(checkpoint.state_dict)
    recorder.noise_witness = {int(r): v.numpy() for r, v in checkpoint.noise_witness.items()}
    restore_random_states(state)
    recorder.best_score, recorder.best_round = state.best_score, state.best_round
    recorder.untrained = dict(state.untrained)
    recorder.round_seconds = list(state.round_seconds)
    recorder.refusals = {int(k): int(v) for k, v in state.refusals.items()}
    _restore_files(folder, state)
    last_release = last_ledger_round(folder)
    continued_after = max(state.round, last_release)
    since = state.resumes[-1].get("unix_time", 0.0) if state.resumes else 0.0
    now = time.time()
    state.resumes.append({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "unix_time": now,
        "from_round": state.round,
        "continued_after": continued_after,
        "rounds_lost": continued_after - state.round,
        "stopped_by": stop_cause(folder, since),  # the stop before this resume
    })  # fmt: skip
    if continued_after > state.round:
        logger.warning(
            "resuming %s from round %d; rounds up to %d were released (ledger) but not "
            "saved: they count in the privacy account, training continues at round %d",
            folder, state.round, continued_after, continued_after + 1,
        )  # fmt: skip
    else:
        logger.info("resuming %s after round %d", folder, state.round)
    return Resumption(state, continued_after - state.round_offset)


def _check_resumable(config: FederatedConfig, folder: Path) -> None:
    """The run folder is ``resume-from`` and its run did not complete."""
    if Path(config.resume_from) != folder:
        raise ResumeError(
            f"resume-from {config.resume_from} must be the run's own folder (results-dir "
            f"{folder}): a resumed run continues in the folder it left"
        )
    if completed(folder):
        raise ResumeError(f"{folder / SUMMARY}: this run completed; there is nothing to resume")


def _check_same_run(
    config: FederatedConfig, state: ServerState, folder: Path, round_offset: int
) -> None:
    """The config must be the saved run's: a changed one would not continue that run."""
    ours, saved = run_config_of(config), dict(state.run_config)
    saved.pop(RESUME_KEY, None)
    differences = [
        f"{key} {saved.get(key)!r} (saved) vs {ours.get(key)!r} (now)"
        for key in sorted(set(ours) | set(saved))
        if ours.get(key) != saved.get(key)
    ]
    if differences:
        raise ResumeError(
            f"{folder / STATE_FOLDER}: the run config differs from the saved run's: "
            f"{'; '.join(differences)}"
        )
    if state.round_offset != round_offset:
        raise ResumeError(
            f"{folder / STATE_FOLDER}: saved with round offset {state.round_offset}, but "
            f"initial-checkpoint gives {round_offset}"
        )


def _restore_files(folder: Path, state: ServerState) -> None:
    """Checkpoints and metrics.csv as they were when the state was saved; the temporary
    files of writes the kill cut short removed (their releases were ledgered first)."""
    for leftover in interrupted_writes(folder):
        leftover.unlink(missing_ok=True)
    state_dir = folder / STATE_FOLDER
    keep_file(state_dir / state.model_file, folder / CHECKPOINT)
    if state.best_file:
        keep_file(state_dir / state.best_file, folder / BEST_CHECKPOINT)
    else:
        (folder / BEST_CHECKPOINT).unlink(missing_ok=True)
    path = folder / METRICS
    held = metrics_rows(path) if path.is_file() else 0
    if held < state.metrics_rows:
        raise ResumeError(
            f"{path}: holds {held} rows, but the saved state was written after row "
            f"{state.metrics_rows}"
        )
    cut_csv_rows(path, state.metrics_rows)


def last_ledger_round(folder: Path) -> int:
    """The last round any ledger of this run (``folder``'s name) records; 0 if none."""
    rounds = [
        entry.round
        for path in sorted((folder / LEDGER_FOLDER).glob("*.jsonl"))
        for entry in read_ledger_file(path).entries
        if entry.run_id == folder.name
    ]
    return max(rounds, default=0)


def metrics_rows(path: Path) -> int:
    """Data rows of a metrics.csv (complete lines after the header)."""
    with path.open(newline="") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
