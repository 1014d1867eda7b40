"""What the launcher checks before a killed run is resumed, before any process starts.

``python -m simulations.launch --resume RUN_DIR`` (and ``deploy.run --resume``) carry on
a run in its own folder with its own config. A resume that cannot account for every
earlier release refuses here, with one line naming the file and the problem, and
nothing is trained or released (DESIGN.md, "One writer, nothing released without its
account"):

- the folder and its ``config.json`` (a launcher's, for this folder, not completed);
- no writer holds it (:mod:`common.storage.run_lock`);
- the saved state and the checkpoint it names load, with finite weights;
- a private run's ledgers: present wherever the state says releases were recorded, not
  corrupt, their chains and epsilons recomputed, every saved round's release in them,
  only this run's entries (:func:`common.privacy.run_audit.resume_failures`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.federation.checkpoints import CheckpointError, load_checkpoint
from common.privacy.ledger import LedgerError
from common.privacy.ledger_heads import LEDGER_FOLDER, check_head
from common.privacy.run_audit import resume_failures
from common.storage.run_lock import EXIT_GRACE, SERVER_LOCK, RunFolderBusy, check_unlocked
from server.resume.state import STATE_FOLDER, ResumeError, ServerState, load_server_state

CONFIG = "config.json"
SUMMARY = "summary.json"
LOGS = ("flwr.log", "superlink.log")  # the launcher writes them afresh for each launch


def resumed_run(run_dir: Path) -> tuple[Path, str, dict[str, Any]]:
    """The run folder, preset label and run config (``resume-from`` set) to launch again."""
    folder = Path(run_dir).expanduser().resolve()
    settings_path = folder / CONFIG
    if not settings_path.is_file():
        raise ResumeError(f"{settings_path}: not found; --resume takes a run folder")
    try:
        settings = json.loads(settings_path.read_text())
        label, config = str(settings["preset"]), dict(settings["run_config"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ResumeError(f"{settings_path}: not a launcher's config ({error})") from None
    if completed(folder):
        raise ResumeError(f"{folder / SUMMARY}: this run completed; there is nothing to resume")
    if Path(str(config.get("results-dir", folder))) != folder:
        raise ResumeError(
            f"{settings_path}: results-dir {config.get('results-dir')!r} is not this folder "
            f"(was it moved? resume it where it ran)"
        )
    try:
        check_unlocked(folder, (SERVER_LOCK,), wait=EXIT_GRACE)
    except RunFolderBusy as error:
        raise ResumeError(str(error)) from None
    state = load_server_state(folder)
    check_saved_model(folder, state)
    check_accounts(folder, config, state)
    return folder, label, {**config, "resume-from": str(folder), "results-dir": str(folder)}


def completed(folder: Path) -> bool:
    """Whether the folder's ``summary.json`` says its run completed."""
    path = folder / SUMMARY
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("status") == "completed")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ResumeError(f"{path}: not a run summary (not a JSON object)") from None


def check_saved_model(folder: Path, state: ServerState) -> None:
    """The checkpoints the state names load (finite weights, a known format)."""
    for name in filter(None, (state.model_file, state.best_file)):
        try:
            load_checkpoint(folder / STATE_FOLDER / name)
        except CheckpointError as error:
            raise ResumeError(f"the saved state names a bad checkpoint: {error}") from None


def private(config: dict[str, Any]) -> bool:
    """Whether the run releases anything under DP (so its ledgers must account for it)."""
    return config.get("dp") in ("user", "local") or bool(config.get("statistics"))


def check_accounts(folder: Path, config: dict[str, Any], state: ServerState) -> None:
    """Every release the saved state says was recorded is in readable, consistent ledgers."""
    if not private(config):
        return
    ledger_dir = folder / LEDGER_FOLDER
    released = state.round - state.round_offset
    if config.get("dp") == "user" and released > 0 and "server.jsonl" not in state.ledger:
        raise ResumeError(
            f"{folder / STATE_FOLDER}: the saved state (round {state.round}) of a user-level "
            f"DP run records no server ledger: its releases cannot be accounted for"
        )
    for name, head in sorted(state.ledger.items()):
        path = ledger_dir / name
        if not path.is_file():
            raise ResumeError(
                f"{path} is missing, but the saved state (round {state.round}) records "
                f"{head.get('entries')} entries in it: the releases so far cannot be accounted "
                f"for, so this run cannot be resumed (start a new run)"
            )
        try:
            problem = check_head(path, head, f"the saved state (round {state.round})")
        except LedgerError as error:
            raise ResumeError(f"cannot account for earlier releases: {error}") from None
        if problem:
            raise ResumeError(f"{path}: {problem}; this run cannot be resumed")
    failures = resume_failures(folder, state.round_offset) if ledger_dir.is_dir() else []
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ResumeError(f"cannot account for earlier releases: {failures[0]}{more}")


def keep_earlier_logs(folder: Path) -> None:
    """Rename the killed launch's logs (``flwr.log`` -> ``flwr.1.log``, ...) before a new one."""
    for name in LOGS:
        path = folder / name
        if path.is_file():
            number = 1
            while (target := path.with_name(f"{path.stem}.{number}{path.suffix}")).exists():
                number += 1
            path.rename(target)
