"""Cross-checks of a private run folder that take nobody's word for what the run was.

The ledger, not ``summary.json``, decides whether a run is private: every check here runs
whenever the folder's ledgers hold an entry of the run, whatever the summary says. Each
failure is one sentence naming the file:

- ``summary.json``'s DP mode, randomness and privacy fields against the ledger (a false
  epsilon, a relabelled noise source, "dp = none" over ledgered releases);
- the population the ledger protects against the data set the config names (a smaller
  population loosens delta's rule);
- the released model's own round against the ledger's last release, and a released model
  that is missing (its noise could not be measured);
- every file anywhere in the folder is a ledgered release or on the documented list of
  harmless files (:data:`HARMLESS`, docs/privacy-audit.md): an extra model, a second
  statistics file or a leftover temporary copy is a release nobody accounted for.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.privacy.ledger import LedgerEntry

SERVER = "server"
STATISTICS = "dp-statistics"
MODEL_RELEASES = ("checkpoint.pt",)  # the released model of a DP run
# Files that release nothing computed from users' data (or only simulation-only
# diagnostics, named so in summary.json), by path relative to the run folder.
HARMLESS = (
    "config.json", "run_config.toml", "summary.json", "audit.json", "*.html",
    "metrics.csv", "rejections.csv", "stops.jsonl", "valid_ndcg.png", "train_loss.png",
    "flwr.log", "flwr.*.log", "superlink.log", "superlink.*.log",
    "launcher.lock", "launcher.lock.json", "server.lock", "server.lock.json",
    "scorer.json", "ledger/*.jsonl", "ledger/*.jsonl.sig", "ledger/started-from.json",
    "state/server_state.pt", "state/server_state.json",
    # the canary audit's own input: its planted synthetic users and the data set with
    # them (what the simulation reads, as the data set file itself; nothing it released)
    "canaries.json", "canary-data/*",
)  # fmt: skip
RELEASES = ("checkpoint.pt", "statistics.npz")  # each needs its ledger entry
TOLERANCE = 1e-9


def folder_failures(
    run: Path, summary: Mapping[str, Any], entries: Sequence[LedgerEntry]
) -> list[str]:
    """Every disagreement between a private run's folder and its ledger entries."""
    run_id = str(summary.get("run_id") or run.name)
    ours = [entry for entry in entries if entry.run_id == run_id]
    if not ours:
        return []
    raw = summary.get("config")
    config: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    failures = _mode_failures(run, summary, config, ours)
    failures += _population_failures(run, config, ours)
    failures += _released_model_failures(run, summary, ours)
    finished = summary.get("status") == "completed"
    return failures + inventory_failures(run, finished)


def _mode_failures(
    run: Path, summary: Mapping[str, Any], config: Mapping[str, Any], ours: list[LedgerEntry]
) -> list[str]:
    """summary.json's DP mode, randomness and privacy fields against the ledger."""
    where, failures = run / "summary.json", []
    if config.get("dp") == "none" and not config.get("statistics"):
        failures.append(
            f"{where} says dp = none, but the ledger records {len(ours)} release(s) of this "
            f"run: the ledger decides whether a run is private"
        )
    insecure = bool(config.get("insecure-reproducible-noise"))
    relabelled = [e for e in ours if insecure and e.randomness != "insecure-reproducible"]
    if relabelled:
        failures.append(
            f"{where}'s config asks for insecure-reproducible-noise, but the ledger labels "
            f"{len(relabelled)} release(s) {relabelled[0].randomness!r}: relabelled noise"
        )
    privacy = summary.get("privacy")
    server = [e for e in ours if e.who == SERVER]
    if isinstance(privacy, dict) and server:
        failures += _privacy_field_failures(where, privacy, server)
    return failures


def _privacy_field_failures(
    where: Path, privacy: Mapping[str, Any], server: list[LedgerEntry]
) -> list[str]:
    """The summary's privacy block must repeat the ledger: the guarantee (epsilon, delta,
    population, randomness) its last server entry's, the rounds' mechanism (noise, clip,
    sampling rate) its last DP-FedAvg entry's, the statistics' its dp-statistics entry's."""
    last = server[-1]
    checks = [(field, privacy.get(field), last, field)
              for field in ("epsilon", "delta", "population", "randomness")]  # fmt: skip
    rounds = [e for e in server if e.mechanism != STATISTICS]
    if rounds:
        checks += [(field, privacy.get(field), rounds[-1], field)
                   for field in ("noise_multiplier", "sampling_rate", "clip_norm")]  # fmt: skip
    statistics = [e for e in server if e.mechanism == STATISTICS]
    block = privacy.get("statistics")
    if statistics and isinstance(block, dict):
        joint = block.get("joint_noise_multiplier")
        checks.append(("statistics.joint_noise_multiplier", joint, statistics[-1],
                       "noise_multiplier"))  # fmt: skip
    failures = []
    for name, claimed, entry, field in checks:
        recorded = getattr(entry, field)
        same = (
            isinstance(claimed, int | float) and math.isclose(claimed, recorded, rel_tol=1e-9)
            if isinstance(recorded, float)
            else claimed == recorded
        )
        if claimed is not None and not same:
            failures.append(
                f"{where} states {name} {claimed!r}, but the ledger's {entry.mechanism} entry "
                f"of round {entry.round} records {recorded!r}"
            )
    return failures


def _population_failures(
    run: Path, config: Mapping[str, Any], ours: list[LedgerEntry]
) -> list[str]:
    """A simulation's population is its data set's user count, which anyone can recount."""
    dataset = str(config.get("dataset") or "")
    if not dataset or config.get("deployment-nodes") or not Path(dataset).is_file():
        return []  # a deployment: the population is the operator's public statement
    users = count_users(config)
    wrong = sorted({e.population for e in ours if e.population != users})
    if not wrong:
        return []
    return [
        f"the ledger protects a population of {wrong[0]}, but the data set {dataset} holds "
        f"{users} users: delta's rule (at most 1 / (10 x users)) was checked against the "
        f"wrong population"
    ]


def count_users(config: Mapping[str, Any]) -> int:
    """Users in the data set a run config names, counted as the server counts them."""
    from common.data.partitioning import load_split

    dataset, columns = str(config["dataset"]), str(config.get("dataset-columns", ""))
    return load_split(dataset, columns, str(config.get("dataset-time-unit", ""))).n_users


def _released_model_failures(
    run: Path, summary: Mapping[str, Any], ours: list[LedgerEntry]
) -> list[str]:
    """The released model exists, and its own round is one the ledger released."""
    model_rounds = [e.round for e in ours if e.who == SERVER and e.mechanism != STATISTICS]
    if not model_rounds:
        return []
    path = run / "checkpoint.pt"
    if not path.is_file():
        return [
            f"{path} is missing, but the ledger records model releases up to round "
            f"{max(model_rounds)}: the released model (and its noise) cannot be checked"
        ]
    import torch

    raw = torch.load(path, map_location="cpu", weights_only=True)
    own = raw.get("round") if isinstance(raw, dict) else None
    failures = []
    if not isinstance(own, int) or own > max(model_rounds):
        failures.append(
            f"{path} is the model of round {own}, but the ledger's last server release is "
            f"round {max(model_rounds)}: a released round is missing from the ledger"
        )
    released = summary.get("released_round")
    if isinstance(released, int) and isinstance(own, int) and released != own:
        failures.append(
            f"{run / 'summary.json'} says round {released} was released, but {path} is the "
            f"model of round {own}"
        )
    return failures


def inventory_failures(run: Path, finished: bool = True) -> list[str]:
    """Files of a private run that are neither a release with its entry nor harmless.

    A run that did not finish (killed) may hold the temporary file of a write the kill
    cut short (``.NAME.<random>`` beside NAME), or a round's model linked into ``state/``
    before the state naming it was saved: its release was ledgered first, and a resume
    removes both (:func:`interrupted_writes`, ``save_server_state``); in a finished run
    they fail.
    """
    named = _state_files(run)
    cut_short = set() if finished else set(interrupted_writes(run))
    if not finished:  # a state save the kill cut short: the round's checkpoint, linked
        cut_short |= {path for path in run.glob("state/*-round-*.pt") if path.is_file()}
    failures = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        relative = path.relative_to(run).as_posix()
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in HARMLESS):
            continue
        if relative in named or relative in RELEASES or path in cut_short:
            continue  # releases are checked against the ledger by name
        failures.append(
            f"{path} is neither a ledgered release nor a harmless file "
            f"(docs/privacy-audit.md lists them): {_why(relative)}"
        )
    return failures


def interrupted_writes(run: Path) -> list[Path]:
    """Temporary files of atomic writes a kill cut short (``common/storage/atomic.py``'s
    ``.NAME.<random>`` and ``keep_file``'s ``.NAME.link``), NAME a file the run writes."""
    known = {*RELEASES, *(p for p in HARMLESS if "*" not in p)}
    found = []
    for path in run.rglob(".*"):
        relative = path.relative_to(run)
        name, _, _ = path.name[1:].rpartition(".")
        original = (relative.parent / name).as_posix()
        if path.is_file() and (original in known or original.startswith("state/")):
            found.append(path)
    return sorted(found)


def _state_files(run: Path) -> set[str]:
    """The model files ``state/server_state.json`` names (the resume state)."""
    try:
        state = json.loads((run / "state" / "server_state.json").read_text())
    except (OSError, ValueError):
        return set()
    names = [state.get("model_file"), state.get("best_file")] if isinstance(state, dict) else []
    return {f"state/{name}" for name in names if isinstance(name, str) and name}


def _why(relative: str) -> str:
    """What an unexpected file most likely is."""
    name = relative.rsplit("/", 1)[-1]
    if name.startswith(".") or name.endswith((".pending", ".tmp", ".link")):
        return "a leftover temporary copy of a release"
    if name.endswith(".pt"):
        return "a model no ledger entry accounts for"
    if name.endswith(".npz"):
        return "statistics no ledger entry accounts for"
    return "an unknown file"
