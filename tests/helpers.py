"""Helpers shared by test modules (no test module imports another)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from common.data.catalogue import ItemCatalogue
from common.data.partitioning import load_split
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import SequenceRecommender, build_model
from common.models.base import row_cross_entropy
from server.cohort_aggregation import CohortAggregation
from server.resume.keeper import RoundStateKeeper
from server.run_recorder import RunRecorder
from server.user_level_privacy import UserLevelPrivacy
from simulations.launch import app_defaults
from simulations.launch import main as launch_main
from simulations.process_tree import process_table
from simulations.superlink import free_port
from simulations.supervision import marked_processes

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TINY_USERS = 20
TINY_ITEMS = 30
TINY_LENGTH = 14


def write_cycle_log(
    path: Path, n_users: int = TINY_USERS, n_items: int = TINY_ITEMS, length: int = TINY_LENGTH
) -> Path:
    """CSV click log: user ``uK`` visits items start, start + 1, ... (mod n_items)."""
    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(n_users):
        start = int(rng.integers(0, n_items))
        lines += [f"u{user},i{(start + t) % n_items},{1000 * user + t}" for t in range(length)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cycle_attributes(cycle_log: Path, path: Path) -> Path:
    """Item attributes of a cycle log's items iK (CSV item,attribute): ``mod3-<K % 3>``,
    and ``even`` when K is even; the last item has none."""
    items = sorted({line.split(",")[1] for line in cycle_log.read_text().splitlines()[1:]})
    last = max(items, key=lambda item: int(item[1:]))
    rows = [(item, f"mod3-{int(item[1:]) % 3}") for item in items if item != last]
    rows += [(item, "even") for item in items if int(item[1:]) % 2 == 0]
    path.write_text("item,attribute\n" + "".join(f"{i},{a}\n" for i, a in rows))
    return path


TINY_RUN = {"model": "lstm", "dim": 8, "layers": 1, "partition-mode": "cross-device",
            "max-len": 10, "dropout": 0.0, "num-server-rounds": 2,
            "fraction-train": 1.0, "local-epochs": 10, "lr": 0.1, "batch-size": 16}  # fmt: skip


def write_preset(path: Path, settings: dict[str, object]) -> Path:
    """A preset file (one ``key = value`` line per setting) for the launcher."""
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return path


def launch_run(
    root: Path, name: str, settings: dict[str, object], flags: tuple[str, ...] = ()
) -> Path:
    """Launch one tiny simulation under ``root/name`` (more launcher ``flags`` if given)
    and return its run folder."""
    preset = write_preset(root / f"{name}.toml", settings)
    results = root / name
    code = launch_main(
        ["--preset", str(preset), "--results", str(results), "--port", str(free_port()), *flags]
    )
    assert code == 0, name
    (folder,) = results.iterdir()
    return folder


@dataclass
class FedAvgTrace:
    """What :func:`in_process_fedavg` computed: the final global model, validation
    NDCG@10 after each round (round 0: untrained), and each round's example-weighted
    training loss and example count, as a run's metrics.csv records them."""

    model: SequenceRecommender
    valid_ndcg: list[float]
    train_loss: list[float]
    examples: list[int]


def in_process_fedavg(config: FederatedConfig, clients: int) -> FedAvgTrace:
    """FedAvg of ``clients`` partitions (every one each round) computed in-process,
    without Flower: the reference a real simulation of ``config`` must match. Torch runs
    on one thread meanwhile, as a simulation's one-CPU client workers do (Ray sets
    ``OMP_NUM_THREADS=1``): sums split over threads round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fedavg(config, clients)
    finally:
        torch.set_num_threads(threads)


def _fedavg(config: FederatedConfig, clients: int) -> FedAvgTrace:
    """:func:`in_process_fedavg` on the threads it was given."""
    from common.data.partitioning import load_partition
    from common.evaluation.scoring import evaluate_model
    from common.federation.messages import load_arrays
    from common.training.local import round_seed, train_local

    split = load_split(config.dataset)
    torch.manual_seed(config.seed)
    server = build_model(config.model_config(), split.n_items)
    untrained = evaluate_model(server, split, "valid", config.max_len)["ndcg@10"]
    trace = FedAvgTrace(server, [untrained], [], [])
    windows = [
        load_partition(config.dataset, clients, pid, config.seed).training_windows(config.max_len)
        for pid in range(clients)
    ]  # the same every round
    for server_round in range(1, config.num_server_rounds + 1):
        start, updates, losses, weights = model_to_arrays(server), [], [], []
        for pid in range(clients):
            local = build_model(config.model_config(), split.n_items)
            load_arrays(local, start)
            seed = round_seed(config.seed, server_round, pid)
            loss, examples = train_local(local, windows[pid], config, seed)
            updates.append(dict(local.named_parameters()))
            losses.append(loss)
            weights.append(examples)
        share = np.asarray(weights) / sum(weights)
        with torch.no_grad():
            for name, param in server.named_parameters():
                param.copy_(
                    torch.stack(
                        [float(w) * u[name] for w, u in zip(share, updates, strict=True)]
                    ).sum(0)
                )
        trace.train_loss.append(float(np.dot(share, losses)))
        trace.examples.append(sum(weights))
        trace.valid_ndcg.append(evaluate_model(server, split, "valid", config.max_len)["ndcg@10"])
    return trace


BASE = {"model": "lstm", "dim": 8, "layers": 1,
        "max-len": 20, "dropout": 0.0, "num-server-rounds": 4,
        "local-epochs": 1, "optimizer": "sgd", "lr": 0.5, "batch-size": 4,
        "strategy": "fedavg", "clip-norm": 0.5, "noise-multiplier": 1.0}  # fmt: skip


MARKER = "FEDSEQREC_KILL_TEST"  # every process of a launched simulation inherits it


@dataclass(frozen=True)
class Launch:
    """A launcher subprocess and the marker its whole simulation inherits."""

    process: subprocess.Popen[bytes]
    marker: str
    results: Path
    log: Path
    port: int


def live_processes() -> dict[int, tuple[list[bytes], str]]:
    """Every other process that has not exited: pid -> (environment, command line)."""
    found = {}
    for pid, (_, _, state) in process_table().items():
        if state in ("Z", "X") or pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone, or not ours to read
            continue
        found[pid] = (environ, command.decode(errors="replace"))
    return found


def simulation_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``MARKER=marker``: their command lines."""
    return marked_processes(marker, variable=MARKER)


def survivors(marker: str, within: float = 60.0) -> dict[int, str]:
    """The processes still carrying ``MARKER=marker`` once none is left or ``within``
    seconds have passed: what a stop (a watchdog's, a launcher's) left running."""
    deadline = time.monotonic() + within
    while simulation_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return simulation_processes(marker)


def part_of(launch: Launch, command: str) -> int:
    """The pid of the launched simulation's part started as ``command`` (e.g.
    ``flwr-simulation``, the ServerApp), not of a Python launcher of it.

    A child the part has just forked shows the part's command line until it executes
    its own program (Ray's services are started so, and on busy cores that lasts long
    enough to be seen): the part is the match whose parent is not a match."""
    matches = {pid for pid, line in simulation_processes(launch.marker).items()
               if command in line and "python -m" not in line}  # fmt: skip
    table = process_table()
    (pid,) = [pid for pid in matches if table.get(pid, (0, 0, ""))[0] not in matches]
    return pid


def stop_serverapp(pid: int, run_folder: Path) -> None:
    """SIGSTOP a ServerApp so that its run stands still, and check the run had not ended:
    a test that kills a run mid-run must not race its last rounds (a tiny round takes
    about 0.1 s; on busy cores the run had ended before the kill landed)."""
    os.kill(pid, signal.SIGSTOP)
    assert not (run_folder / "summary.json").exists(), "the run ended before it was stopped"


def processes_naming(*needles: str) -> dict[int, str]:
    """Live processes whose command line contains one of ``needles``."""
    return {
        pid: command
        for pid, (_, command) in live_processes().items()
        if any(needle in command for needle in needles)
    }


def kill_simulation(launch: Launch, timeout: float = 30.0) -> dict[int, str]:
    """SIGKILL the launcher's process group and every process of its simulation at once,
    then again until none is left (a dying parent may have started a child); their commands."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    alive = simulation_processes(launch.marker)
    if launch.process.poll() is None:
        os.killpg(launch.process.pid, signal.SIGKILL)
    while alive:
        for pid in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(alive)
        assert time.monotonic() < deadline, f"processes survive SIGKILL: {sorted(alive)}"
        time.sleep(0.05)
        alive = simulation_processes(launch.marker)
    launch.process.wait(timeout=timeout)
    # an exiting process stops showing its environment before it closes its files (and
    # lets go of its locks): wait until each one has really exited
    assert still_running(list(killed), within=timeout) == [], "killed processes linger"
    for word in {word for command in killed.values() for word in command.split()}:
        if Path(word).name.startswith("fedseqrec-app-"):  # nobody was left to remove it
            shutil.rmtree(word, ignore_errors=True)
    return killed


def spawn_launch(args: list[str], results: Path, log: Path, env: dict[str, str]) -> Launch:
    """``python -m simulations.launch ARGS`` in a session of its own, marked for killing.

    ``env`` is the launcher's environment (e.g. ``flower_env()``); a fresh marker is added.
    """
    env = {**env, MARKER: uuid.uuid4().hex}
    command = [sys.executable, "-m", "simulations.launch", *args, "--results", str(results)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Launch(process, env[MARKER], results, log, 0)


def running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    return process_table().get(pid, (0, 0, "X"))[2] not in ("Z", "X")


def still_running(pids: list[int], within: float = 5.0) -> list[int]:
    """The ``pids`` still running after up to ``within`` seconds: a SIGKILLed process
    takes a moment to exit on a loaded machine."""
    deadline = time.monotonic() + within
    alive = [pid for pid in pids if running(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if running(pid)]
    return alive


def start_session_tree(folder: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start :data:`SESSION_TREE` (root -> child in a new session -> grandchild that
    ignores SIGTERM) and wait for all three; the root and the three pids."""
    script, pids = folder / "tree.py", folder / "pids"
    script.write_text(SESSION_TREE)
    root = subprocess.Popen(
        [sys.executable, str(script), "root", str(pids)], start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not pids.exists() or pids.read_text().count("\n") < 3:
        assert time.monotonic() < deadline, "the process tree never started"
        time.sleep(0.05)
    return root, [int(line) for line in pids.read_text().split()]


SESSION_TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    role, pids = sys.argv[1], sys.argv[2]
    if role == "root":
        subprocess.Popen([sys.executable, __file__, "session", pids], start_new_session=True)
    elif role == "session":
        subprocess.Popen([sys.executable, __file__, "stubborn", pids])
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pids, "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(120)  # bounded, should the test fail before it stops them
    """
)


class FakeEncoder:
    """Deterministic 8-d encoder that counts its calls."""

    name = "fake-8"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            row = np.random.default_rng(seed).normal(size=8)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), 8)


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run folder's metrics.csv."""
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def user_dp_run(
    folder: Path,
    click_log: Path,
    rounds: int = 4,
    *,
    initial_checkpoint: Path | None = None,
    insecure: bool = False,
    target_epsilon: float = 0.0,
) -> Path:
    """A user-level DP run folder written by the real server code, without Flower.

    :class:`UserLevelPrivacy` checks and records each round, :class:`CohortAggregation`
    draws its noise and noise witness (on zero updates), :class:`RunRecorder` writes
    metrics, checkpoints (with ledger heads and witnesses) and the summary; a run continued from
    ``initial_checkpoint`` first carries the earlier server ledger forward, as
    ``server_app.continue_from_checkpoint`` does.
    """
    import torch
    from flwr.app import MetricRecord, RecordDict

    from common.data.partitioning import load_split
    from common.federation.checkpoints import load_checkpoint
    from common.federation.config import FederatedConfig
    from common.federation.messages import model_to_arrays
    from common.models import build_model
    from common.privacy.randomness import server_noise_source
    from server.run_recorder import RunRecorder
    from server.user_level_privacy import UserLevelPrivacy, carry_ledger_forward

    config = FederatedConfig(
        dataset=str(click_log), model="lstm", dim=8, max_len=6, num_server_rounds=rounds,
        partition_mode="cohort", dp="user", noise_multiplier=0.0 if target_epsilon else 1.0,
        target_epsilon=target_epsilon, fraction_train=0.5, results_dir=str(folder),
        initial_checkpoint=str(initial_checkpoint or ""),
    )  # fmt: skip
    split = load_split(config.dataset)
    torch.manual_seed(0)
    model = build_model(config.model_config(), split.n_items)
    offset = 0
    if initial_checkpoint is not None:
        start = load_checkpoint(initial_checkpoint)
        offset = start.round
        carry_ledger_forward(initial_checkpoint, start.ledger, folder)
    privacy = UserLevelPrivacy.from_config(
        config, split.n_users, folder, insecure_reproducible_noise=insecure, round_offset=offset
    )
    recorder = RunRecorder(folder, model, split, config, 10, round_offset=offset)
    aggregation = CohortAggregation(
        FedAvg(), privacy.noise_multiplier, config.clip_norm, split.n_users * config.fraction_train,
        server_noise_source(insecure, config.seed, offset),
    )  # fmt: skip
    arrays = model_to_arrays(model)
    recorder.evaluate(0, arrays)
    reply = RecordDict(
        {"metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10, "clients": 5})}
    )
    for server_round in range(1, rounds + 1):
        privacy.check_round(server_round)
        zeros = {name: np.zeros_like(arrays[name].numpy()) for name in arrays}
        witness = aggregation.privatize(server_round, zeros)
        privacy.record_round(server_round)
        recorder.note_noise_witness(server_round, witness)
        recorder.aggregate_train([reply], "num-examples")
        recorder.evaluate(server_round, arrays)
    recorder.finish(privacy=privacy.summary())
    return folder


def per_unit_gradients(
    model: SequenceRecommender, items: torch.Tensor, targets: torch.Tensor,
    gaps: torch.Tensor | None, units: torch.Tensor, weights: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:  # fmt: skip
    """Each unit's gradient by its own backward pass, and its norm times ``scale``."""
    norms, per_unit = [], []
    for unit in range(int(units.max()) + 1):
        rows = units == unit
        model.zero_grad(set_to_none=True)
        unit_gaps = gaps[rows] if gaps is not None else None
        loss = (row_cross_entropy(model, model(items[rows], unit_gaps), targets[rows])
                * weights[rows]).sum()  # fmt: skip
        loss.backward()
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p)
                 for n, p in model.named_parameters()}  # fmt: skip
        norms.append(scale * torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
        per_unit.append(grads)
    model.zero_grad(set_to_none=True)
    return torch.stack(norms), per_unit


class ItemLogits(torch.nn.Module):
    """Wraps a recommender so Opacus's checker sees scores at every position (both uses
    of the tied item table)."""

    def __init__(self, model: SequenceRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.model.item_logits(self.model(items))


def write_scorer_files(
    run_dir: Path, stats: Any, settings: Any, attributes_source: str, dataset: str
) -> None:
    """A run folder's scorer files as a statistics run leaves them: statistics, then settings."""
    from common.evaluation.scorer_files import write_scorer_settings
    from common.privacy.statistics import STATISTICS_FILE

    if not str(attributes_source).strip():
        raise ValueError("the on-device scorer needs item attributes; the source is empty")
    stats.save(Path(run_dir) / STATISTICS_FILE)
    write_scorer_settings(Path(run_dir), settings, attributes_source, dataset)


def resumable_config(cycle_log: Path, folder: Path, **changes: object) -> FederatedConfig:
    """A tiny user-level DP run in ``folder``."""
    settings: dict[str, object] = {
        "dataset": str(cycle_log), "model": "lstm", "dim": 8, "max_len": 6,
        "num_server_rounds": 6, "partition_mode": "cohort", "dp": "user",
        "noise_multiplier": 1.0, "fraction_train": 0.5, "results_dir": str(folder),
    }  # fmt: skip
    return FederatedConfig(**{**settings, **changes})  # type: ignore[arg-type]


def resumable_recorder(config: FederatedConfig) -> RunRecorder:
    split = load_split(config.dataset)
    torch.manual_seed(0)
    model = build_model(config.model_config(), split.n_items)
    return RunRecorder(Path(config.results_dir), model, split, config, 10)


def killed_dp_run(cycle_log: Path, folder: Path, saved: int, released: int) -> RunRecorder:
    """Rounds 1..``saved`` recorded and saved (with their noise witnesses), then releases
    up to ``released``, unsaved."""
    config = resumable_config(cycle_log, folder)
    recorder = resumable_recorder(config)
    privacy = UserLevelPrivacy.from_config(config, 20, folder)
    aggregation = CohortAggregation(FedAvg(), 1.0, 1.0, 20 * config.fraction_train)
    keeper = RoundStateKeeper(recorder, FedAvg(), config)
    reply = RecordDict({"metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10})})
    keeper.evaluate(0, model_to_arrays(recorder.model))
    for server_round in range(1, released + 1):
        witness = aggregation.privatize(server_round, {})  # the round's noise: its witness
        privacy.record_round(server_round)
        if server_round <= saved:
            recorder.note_noise_witness(server_round, witness)
            recorder.aggregate_train([reply], "num-examples")
            with torch.no_grad():
                next(recorder.model.parameters()).add_(0.01)
            keeper.evaluate(server_round, model_to_arrays(recorder.model))
    return recorder


def forge_noise_consistently(
    run: Path, factor: float = 2.0, signer: Any = None, mechanism: str = ""
) -> None:
    """What a dishonest server can do to its own run folder, and no ledger check sees.

    Every noise multiplier in ``ledger/server.jsonl`` (of ``mechanism``'s entries alone
    if given, e.g. ``dp-fedavg``: the rounds, not the statistics) times ``factor``, every epsilon
    recomputed with the project's accountant, the hash chain rebuilt, the entries signed
    again with ``signer`` (the server's own ledger key, a :class:`Signer`), and the
    ledger heads of ``summary.json`` and of every checkpoint rewritten to match.
    """
    from common.privacy.accounting import composed_epsilon
    from common.privacy.ledger import GENESIS, LedgerEntry, line_hash
    from common.privacy.ledger_heads import ledger_heads
    from common.privacy.signing import ledger_signing, signatures_path

    path = run / "ledger" / "server.jsonl"
    releases, lines, previous = [], [], GENESIS
    for text in path.read_text().splitlines():
        record = {"accountant": "rdp", **json.loads(text), "prev_hash": previous}
        if not mechanism or record["mechanism"] == mechanism:
            record["noise_multiplier"] *= factor
        releases.append(LedgerEntry(**record).release())
        record["epsilon"] = composed_epsilon(releases, record["delta"], record["accountant"])
        lines.append(LedgerEntry(**record).to_json())
        previous = line_hash(lines[-1].encode())
    path.write_text("\n".join(lines) + "\n")
    signatures_path(path).unlink(missing_ok=True)
    if signer is not None:
        for line in lines:
            ledger_signing(path, signer)(line.encode())
    heads = ledger_heads(run / "ledger")
    summary = json.loads((run / "summary.json").read_text())
    summary["ledger"] = heads
    summary["privacy"]["noise_multiplier"] *= factor
    summary["privacy"]["epsilon"] = json.loads(lines[-1])["epsilon"]
    (run / "summary.json").write_text(json.dumps(summary))
    for checkpoint in run.glob("*.pt"):
        raw = torch.load(checkpoint, weights_only=True)
        raw["ledger"] = heads
        torch.save(raw, checkpoint)


def node_logs(cycle_log: Path, folder: Path) -> list[Path]:
    """Users u0-u9 on node 1, u10-u19 on node 2, each in its own node folder."""
    header, *rows = cycle_log.read_text().splitlines()
    paths = []
    for index, keep in enumerate((lambda u: u < 10, lambda u: u >= 10), start=1):
        path = folder / f"node-{index}" / "clicks.csv"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join([header, *(r for r in rows if keep(int(r.split(",")[0][1:])))]))
        paths.append(path)
    return paths


def deployment_run_config(
    cycle_log: Path, folder: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """A deployment's run config: the app's defaults and ``settings``, with the server
    holding public files only: the item catalogue (written from ``cycle_log`` into
    ``folder``), no click log of its own."""
    catalogue = folder / "catalogue.txt"
    ItemCatalogue.from_dataset(str(cycle_log)).write(catalogue)
    return {**app_defaults(), **settings, "dataset": str(folder / "no-user-data.csv"),
            "catalogue": str(catalogue)}  # fmt: skip
