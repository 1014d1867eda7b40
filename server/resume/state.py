"""The server's state after each round, saved in the run folder so a killed run can resume.

``<run>/state/`` holds, after every round (round 0 included):

- ``server_state.pt`` (``torch.save``, readable with ``weights_only=True``): the round,
  the global arrays as Flower holds them (FedAdam and FedYogi make them float64, the
  checkpoints hold the model's float32), the server optimizer's state (FedAdam /
  FedYogi ``m_t`` and ``v_t``, FedAvgM's momentum), the best round and its score, the
  Python ``random`` state Flower samples nodes with, torch's RNG state, the rows of
  ``metrics.csv`` and the ledger heads at that round, the failure totals
  (:class:`server.fault_tolerance.FaultLog`), and the run config;
- ``model-round-R.pt`` and ``best-round-B.pt``: hard links to (or copies of) that
  round's ``checkpoint.pt`` and the best round's ``best_checkpoint.pt``, which are
  written atomically by :class:`server.run_recorder.RunRecorder` before, so the state
  names files that can never change under it;
- ``server_state.json``: the same, minus the arrays, for people.

Each file is written atomically (temporary file + rename) and the state only names files
written before it, so a kill at any moment leaves the last complete round's state. It
is written after the round's ledger entry, checkpoint and metrics row.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.storage.atomic import write_atomically, write_text_atomically

STATE_FOLDER = "state"
STATE_FILE = "server_state.pt"
STATE_SUMMARY = "server_state.json"
STATE_FORMAT = 1


class ResumeError(ValueError):
    """A run folder cannot be resumed; the message names the file and why."""


@dataclass
class ServerState:
    """Everything the server needs to carry on after ``round`` (see the module docstring)."""

    round: int  # numbered round of the model (a continued run's offset included)
    round_offset: int  # round of the initial checkpoint the run continued from
    model_file: str  # in state/: the round's checkpoint
    best_file: str  # in state/: the best round's checkpoint ("" = none yet)
    best_score: float
    best_round: int
    untrained: dict[str, float]
    round_seconds: list[float]
    refusals: dict[int, int]
    metrics_rows: int  # data rows of metrics.csv after this round's row
    ledger: dict[str, dict[str, Any]]  # heads of the run's ledgers after this round
    run_config: dict[str, Any]
    resumes: list[dict[str, Any]] = field(default_factory=list)  # earlier resumptions
    faults: dict[str, int] = field(default_factory=dict)  # FaultLog totals after this round
    optimizer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)  # as Flower holds them
    python_random: tuple[Any, ...] = ()
    torch_random: torch.Tensor | None = None

    def describe(self) -> dict[str, Any]:
        """The JSON-able part (no arrays, no RNG states)."""
        described = asdict(self)
        for key in ("optimizer", "arrays", "python_random", "torch_random"):
            described.pop(key)
        described["optimizer"] = sorted(self.optimizer)
        described["format"] = STATE_FORMAT
        return described


def save_server_state(folder: Path, state: ServerState) -> None:
    """Write ``state`` atomically into ``folder/state/``, then drop files it no longer names."""
    state_dir = folder / STATE_FOLDER
    state_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": STATE_FORMAT, **asdict(state)}
    payload["refusals"] = {int(k): int(v) for k, v in state.refusals.items()}
    write_atomically(state_dir / STATE_FILE, lambda handle: torch.save(payload, handle))
    text = json.dumps(state.describe(), indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomically(state_dir / STATE_SUMMARY, text)
    kept = {state.model_file, state.best_file}
    for path in state_dir.glob("*-round-*.pt"):
        if path.name not in kept:
            path.unlink(missing_ok=True)


def load_server_state(folder: Path) -> ServerState:
    """The last saved state of a run folder, or a :class:`ResumeError` saying why not."""
    path = folder / STATE_FOLDER / STATE_FILE
    if not path.is_file():
        raise ResumeError(
            f"{path}: no saved server state (the run stopped before its first round was "
            f"evaluated, or it predates resumable runs): start it again instead"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        raise ResumeError(f"{path}: not a readable server state ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not a server state of format {STATE_FORMAT}")
    raw.pop("format")
    try:
        state = ServerState(**raw)
    except TypeError as error:
        raise ResumeError(f"{path}: malformed server state ({error})") from None
    for name in filter(None, (state.model_file, state.best_file)):
        if not (folder / STATE_FOLDER / name).is_file():
            raise ResumeError(f"{path}: names {name}, which is missing from {path.parent}")
    return state


def keep_file(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes for good: a hard link, else a copy; atomic."""
    if target.exists() and os.path.samefile(source, target):
        return  # already the same file (renaming a link onto it would leave the link behind)
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
        os.replace(temporary, target)
    except OSError:  # a file system without hard links
        temporary.unlink(missing_ok=True)
        data = source.read_bytes()
        write_atomically(target, lambda handle: handle.write(data))


def random_states() -> tuple[tuple[Any, ...], torch.Tensor]:
    """Python's ``random`` state (Flower's node sampling) and torch's CPU RNG state."""
    return random.getstate(), torch.get_rng_state()


def restore_random_states(state: ServerState) -> None:
    """Put the saved RNG states back, so node sampling goes on as it would have."""
    if state.python_random:
        version, internal, gauss = state.python_random
        random.setstate((version, tuple(internal), gauss))
    if state.torch_random is not None:
        torch.set_rng_state(state.torch_random)
