"""Malformed inputs other than data files: one clear error, no traceback, nothing overwritten.

Run configs, presets and ``--set`` overrides, node configs, checkpoints, ledgers, item
catalogues and the train CLI's TOML files. Each case makes one bad input, reads it the
way its user would, and checks the one-line message (file, line, field where there is
one) and that the folder beside it is byte-for-byte unchanged. The launchers must refuse
a bad config before any process starts: exit 2, quickly, no run folder. A few cases go
through each command line in a subprocess (exit status 2, no ``Traceback``). The data
files have their own corpus (``test_malformed_data.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import common.training.cli as train_cli
import simulations.launch as launch_module
from common.data.catalogue import ItemCatalogue
from common.data.node_data import NodeDataConfig
from common.federation.checkpoints import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_initial_checkpoint,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.federation.preflight import check_privacy_plan
from common.models import ModelConfig, build_model
from common.privacy.ledger import LedgerError, read_ledger
from common.training.cli import main as train_main
from simulations.launch import main as launch_main
from tests.helpers import PROJECT_ROOT, write_cycle_log

COHORT = {"partition-mode": "cohort"}
SECAGG = {"secure-aggregation": True}
STATS = {"statistics": True, "item-attributes": "builtin", "dataset": "beauty"}
STATS = {**STATS, "target-epsilon": 8.0}
STATS_DP = {**STATS, **COHORT, "dp": "user"}

RUN_CONFIG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("dim text", {"dim": "big"}, r"'dim' must be an integer, got 'big'"),
    ("lr text", {"lr": "fast"}, r"'lr' must be a number, got 'fast'"),
    ("seed fraction", {"seed": 1.5}, r"'seed' must be an integer, got 1\.5"),
    ("rounds bool", {"num-server-rounds": True}, r"'num-server-rounds' must be an integer"),
    ("secagg text", {"secure-aggregation": "yes"}, r"'secure-aggregation' must be true or false"),
    ("dp number", {"dp": 1}, r"'dp' must be a string, got 1"),
    ("dataset number", {"dataset": 5}, r"'dataset' must be a string"),
    ("dropout list", {"dropout": [0.1]}, r"'dropout' must be a number"),
    ("unknown key", {"epochs": 3}, r"unknown run-config key 'epochs'"),
    ("snake-case key", {"num_server_rounds": 3}, r"unknown run-config key 'num_server_rounds'"),
    ("seed -1", {"seed": -1}, r"seed must be in 0\.\.4294967295, got -1"),
    ("seed 2**32", {"seed": 2**32}, r"seed must be in 0\.\.4294967295"),
    ("heads 3 dim 64", {"heads": 3}, r"heads to divide dim: dim 64 is not a multiple of heads 3"),
    ("heads 0", {"heads": 0}, r"dim, layers, heads and max_len must be positive"),
    ("layers 0", {"layers": 0}, r"dim, layers, heads and max_len must be positive"),
    ("max-len 0", {"max-len": 0}, r"max_len must be positive"),
    ("gap buckets -1", {"n-gap-buckets": -1}, r"n_gap_buckets must be >= 0"),
    ("ffn 0", {"ffn-multiplier": 0}, r"ffn_multiplier must be positive"),
    ("dropout 1", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ("rounds 0", {"num-server-rounds": 0}, r"positive \(0 only with statistics = true\), got 0"),
    ("statistics no attributes", {"statistics": True}, r"statistics = true needs item-attri"),
    ("statistics local dp", {**STATS, "dp": "local"}, r"needs dp = 'user' or 'none'"),
    ("statistics share 0", {"statistics-share": 0.0}, r"statistics-share must be in \(0, 1\]"),
    ("statistics share 1", {**STATS_DP}, r"statistics-share 1 leaves no budget for 10 training"),
    ("statistics fixed noise", {**STATS_DP, "target-epsilon": 0.0, "noise-multiplier": 1.0},
     r"needs target-epsilon > 0 and no fixed noise-multiplier"),
    ("statistics rounds 0 share", {**STATS_DP, "num-server-rounds": 0, "statistics-share": 0.5},
     r"num-server-rounds = 0 trains nothing"),
    ("transitions 0", {"transitions-per-user": 0}, r"transitions-per-user must be >= 1, got 0"),
    ("scorer window 0", {"scorer-window": 0}, r"scorer-window must be an integer >= 1, got 0"),
    ("scorer decay 0", {"scorer-decay": 0.0}, r"scorer-decay must be in \(0, 1\], got 0.0"),
    ("scorer floor 0", {"scorer-transition-floor": 0.0}, r"scorer-transition-floor must be > 0"),
    ("scorer weight nan", {"scorer-model-weight": float("nan")}, r"scorer-model-weight must be a"),
    ("epochs 0", {"local-epochs": 0}, r"local-epochs must be positive"),
    ("batch 0", {"batch-size": 0}, r"batch-size must be positive"),
    ("eval-every 0", {"eval-every": 0}, r"eval-every must be positive"),
    ("lr 0", {"lr": 0}, r"lr, server-lr and server-tau must be > 0"),
    ("lr nan", {"lr": float("nan")}, r"lr must be a finite number, got nan"),
    ("lr inf", {"lr": float("inf")}, r"lr must be a finite number, got inf"),
    ("clip 0", {"clip-norm": 0.0}, r"clip-norm must be > 0"),
    ("clip inf", {"clip-norm": float("inf")}, r"clip-norm must be a finite number"),
    ("delta 1", {"delta": 1.0}, r"delta must be in \[0, 1\)"),
    ("delta negative", {"delta": -0.1}, r"delta must be in \[0, 1\)"),
    ("fraction 0", {"fraction-train": 0.0}, r"fraction-train must be in \(0, 1\]"),
    ("fraction 1.5", {"fraction-train": 1.5}, r"fraction-train must be in \(0, 1\]"),
    ("eval fraction", {"fraction-evaluate": -0.1}, r"fraction-evaluate in \[0, 1\]"),
    ("momentum 1", {"server-momentum": 1.0}, r"server-momentum must be in \[0, 1\)"),
    ("noise negative", {"noise-multiplier": -1.0}, r"noise-multiplier.*must be >= 0"),
    ("target nan", {"target-epsilon": float("nan")}, r"target-epsilon must be a finite"),
    ("population -1", {"population": -1}, r"population must be >= 0, got -1"),
    ("users per client 0", {"users-per-client": 0}, r"users-per-client and client-threads"),
    ("threads 0", {"client-threads": 0}, r"users-per-client and client-threads"),
    ("deployment nodes -1", {"deployment-nodes": -1}, r"deployment-nodes must be >= 0"),
    ("quantization 0", {"secagg-quantization-range": 0}, r"secagg-quantization-range must"),
    ("shares 2", {"secagg-num-shares": 2}, r"secagg-num-shares as a count must be at least 3"),
    ("strategy", {"strategy": "fedsgd"}, r"strategy must be one of fedavg, .*'fedsgd'"),
    ("optimizer", {"optimizer": "rmsprop"}, r"optimizer must be one of adam, sgd"),
    ("partition mode", {"partition-mode": "p2p"}, r"partition-mode must be one of"),
    ("dp mode", {"dp": "central"}, r"dp must be one of none, user, local, got 'central'"),
    ("compression", {"update-compression": "zip"}, r"update-compression must be one of"),
    ("norm", {"norm": "middle"}, r"norm must be one of sasrec, pre, post"),
    ("model", {"model": "gru"}, r"model must be one of lstm, multiscale, attention"),
    ("user dp silo", {"dp": "user", "noise-multiplier": 1.0}, r"needs partition-mode = 'cohort'"),
    ("local dp cohort", {**COHORT, "dp": "local", "noise-multiplier": 1.0}, r"dp = 'local'"),
    ("user dp no noise", {**COHORT, "dp": "user"}, r"dp = 'user' needs noise-multiplier > 0"),
    ("local dp no noise", {"dp": "local", "target-epsilon": 0.0},
     r"dp = 'local' needs noise-multiplier > 0 or target-epsilon > 0"),
    ("compression cohort", {**COHORT, "update-compression": "float16"}, r"not with partition"),
    ("secagg local dp", {**SECAGG, "dp": "local", "noise-multiplier": 1.0}, r"and dp = 'none'"),
    ("secagg fedadam", {**SECAGG, "strategy": "fedadam"}, r"secure-aggregation works with"),
    ("through validation deployed",
     {"train-through-validation": True, "deployment-nodes": 2, "catalogue": "/srv/items.txt",
      "population": 20}, r"train-through-validation is for simulations"),
    ("secagg evaluate", {**SECAGG, "fraction-evaluate": 0.5}, r"needs fraction-evaluate = 0"),
    ("deployment no catalogue", {"deployment-nodes": 2}, r"set run-config 'catalogue'"),
    ("relative checkpoint", {"initial-checkpoint": "c.pt"}, r"initial-checkpoint must be an abs"),
    ("empty dataset", {"dataset": ""}, r"dataset must name a built-in data set or a file"),
    ("attributes xml", {"item-attributes": "a.xml"}, r"item-attributes 'a\.xml': expected"),
    ("attributes builtin", {"dataset": "log.csv", "item-attributes": "builtin"},
     r"'log\.csv' has no built-in attri"),
    ("column role", {"dataset": "log.csv", "dataset-columns": "usr=a"}, r"unknown role 'usr'"),
    ("time unit", {"dataset": "log.csv", "dataset-time-unit": "days"}, r"time unit must be"),
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``: what 'nothing overwritten' is checked on."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_line(message: str, pattern: str) -> None:
    assert "\n" not in message and len(message) < 1000, message
    assert re.search(pattern, message), message


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [case[1:] for case in RUN_CONFIG_CASES],
    ids=[case[0] for case in RUN_CONFIG_CASES],
)
def test_run_config_is_refused_in_one_line(overrides: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError) as caught:
        FederatedConfig.from_run_config(overrides)
    assert_one_line(str(caught.value), pattern)


def test_an_unreachable_target_epsilon_names_the_key_and_the_floor() -> None:
    # with statistics, the rounds compose after them: at delta 1e-3 no noise brings the
    # composition below the PLD discretisation's residue
    config = FederatedConfig.from_run_config(
        {**STATS_DP, "statistics-share": 0.5, "target-epsilon": 1e-9}
    )

    with pytest.raises(ValueError) as caught:
        check_privacy_plan(config, 100)

    assert_one_line(
        str(caught.value),
        r"^target-epsilon 1e-09 is too low: the PLD accountant certifies no epsilon below "
        r"\S+ for these releases, however large the noise; set target-epsilon >= \S+$",
    )


@pytest.mark.parametrize("mode", [{**COHORT, "dp": "user"}, {"dp": "local"}], ids=["user", "local"])
def test_a_tiny_target_epsilon_is_met_under_pld(mode: dict[str, Any]) -> None:
    # RDP refused targets below ~0.1 at any noise; PLD certifies (0, delta) for one
    # Gaussian release once its total variation is below delta, so any target > 0 is met
    check_privacy_plan(FederatedConfig.from_run_config({**mode, "target-epsilon": 1e-9}), 100)


# --- the simulation launcher: presets, --set, and files the config names -------------

LAUNCH_CASES: list[tuple[str, str, list[str], str]] = [
    ("bad toml", "lr = = 1\n", [], r"preset .*bad\.toml: invalid TOML"),
    ("preset unknown key", "learning-rate = 0.1\n", [], r"unknown key\(s\) learning-rate"),
    ("preset results-dir", 'results-dir = "/tmp/x"\n', [], r"results-dir is set by the launcher"),
    ("preset wrong type", 'dim = "big"\n', [], r"'dim' must be an integer, got 'big'"),
    ("preset seed -1", "seed = -1\n", [], r"invalid config: seed must be in 0\.\."),
    ("preset not utf-8", b"dim = \xff\xfe\n", [], r"bad\.toml: cannot read it"),
    ("set without =", "", ["dim"], r"--set expects key=value, got 'dim'"),
    ("set empty key", "", ["=3"], r"--set expects key=value"),
    ("set unknown key", "", ["epochs=3"], r"--set: unknown key\(s\) epochs"),
    ("set results-dir", "", ["results-dir='/x'"], r"--set: results-dir is set by the launcher"),
    ("set heads 3", "", ["heads=3", "dim=64", "model='attention'"], r"heads to divide dim"),
    ("set dp without noise", "", ["dp='user'", "partition-mode='cohort'"],
     r"dp = 'user' needs noise-multiplier > 0 or target-epsilon > 0"),
    ("set lr text", "", ["lr=fast"], r"'lr' must be a number, got 'fast'"),
    ("deployment nodes", "", ["deployment-nodes=2", "catalogue='/c.txt'", "population=20"],
     r"deployment-nodes is for deployments"),
    ("dataset missing", "", ["dataset='/nowhere/log.csv'"], r"'/nowhere/log\.csv': file not found"),
    ("checkpoint missing", "", ["initial-checkpoint='/nowhere/c.pt'"], r"c\.pt': file not found"),
    ("checkpoint not torch", "", ["initial-checkpoint='{tmp}/notes.pt'"],
     r"notes\.pt: not a readable checkpoint"),
    ("population mismatch", "", ["population=943"], r"population 943 differs from the 20 users"),
    ("delta above 1/10n", "", ["dp='user'", "partition-mode='cohort'", "noise-multiplier=1.0",
                               "delta=0.01"], r"delta 1e-2 above 1 / \(10 x 20\)"),
    ("checkpoint nan", "", ["initial-checkpoint='{tmp}/nan.pt'"],
     r"nan\.pt: tensor 'items\.weight' holds 1 NaN or infinite value\(s\) out of"),
    ("attributes missing", "", ["item-attributes='/nowhere/attrs.json'"],
     r"attrs\.json: item attribute file not found"),
    ("results is a file", "", ["--results={tmp}/notes.pt"], r"--results .*cannot create a run"),
]  # fmt: skip


def _no_process(*args: object) -> None:
    """Stands in for the step that starts the work: the SuperLink, or the training data."""
    raise AssertionError("the command went on past its checks")


@pytest.mark.parametrize(
    ("preset_text", "sets", "pattern"),
    [case[1:] for case in LAUNCH_CASES],
    ids=[case[0] for case in LAUNCH_CASES],
)
def test_launcher_refuses_before_starting_anything(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    preset_text: str | bytes,
    sets: list[str],
    pattern: str,
) -> None:
    monkeypatch.setattr(launch_module, "launch_in", _no_process)
    dataset = write_cycle_log(tmp_path / "cycle.csv")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    non_finite(float("nan"))(tmp_path / "nan.pt")
    preset = tmp_path / "bad.toml"
    body = preset_text or f'dataset = "{dataset}"\nmodel = "lstm"\ndim = 8\n'
    preset.write_bytes(body if isinstance(body, bytes) else body.encode())
    results = tmp_path / "results"
    (results / "earlier-run").mkdir(parents=True)
    (results / "earlier-run" / "summary.json").write_text('{"status": "completed"}')
    before = snapshot(tmp_path)
    flags = [s.format(tmp=tmp_path) for s in sets]
    args = [f for s in flags if s.startswith("--") for f in s.split("=", 1)]
    args += [f for s in flags if not s.startswith("--") for f in ("--set", s)]
    if "--results" not in args:
        args += ["--results", str(results)]

    started = time.monotonic()
    code = launch_main(["--preset", str(preset), *args])

    lines = capsys.readouterr().err.strip().splitlines()
    assert time.monotonic() - started < 20
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert_one_line(lines[0], pattern)
    assert snapshot(tmp_path) == before
    assert [p.name for p in results.iterdir()] == ["earlier-run"]


def test_a_missing_preset_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code = launch_main(["--preset", "no-such-preset"])

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert re.search(r"preset 'no-such-preset' not found \(known presets: .*ml100k-fedavg", line)


# --- node configs ---------------------------------------------------------------------

NODE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no data-path", {"budget-epsilon": 8.0}, r"'data-path' must be a file path, got None"),
    ("data-path number", {"data-path": 5}, r"'data-path' must be a file path, got 5"),
    ("data-path blank", {"data-path": "  "}, r"'data-path' must be a file path"),
    ("unknown key", {"data-path": "/d.csv", "epsilon": 1}, r"unknown node config key\(s\) epsilon"),
    ("ledger number", {"data-path": "/d.csv", "ledger-path": 3}, r"'ledger-path' must be a file"),
    ("ledger folder", {"data-path": "/d.csv", "ledger-path": "{tmp}"}, r"'ledger-path' must be"),
    ("budget 0", {"data-path": "/d.csv", "budget-epsilon": 0}, r"'budget-epsilon' must be a fin"),
    ("budget -1", {"data-path": "/d.csv", "budget-epsilon": -1.0}, r"'budget-epsilon' must be"),
    ("budget inf", {"data-path": "/d.csv", "budget-epsilon": float("inf")}, r"finite number > 0"),
    ("budget nan", {"data-path": "/d.csv", "budget-epsilon": float("nan")}, r"finite number > 0"),
    ("budget text", {"data-path": "/d.csv", "budget-epsilon": "8"}, r"must be a number, got '8'"),
    ("budget bool", {"data-path": "/d.csv", "budget-epsilon": True}, r"must be a number, got T"),
    ("delta 1", {"data-path": "/d.csv", "budget-delta": 1.0}, r"'budget-delta' must be in \(0, 1"),
    ("delta 0", {"data-path": "/d.csv", "budget-delta": 0.0}, r"'budget-delta' must be in \(0, 1"),
    ("columns role", {"data-path": "/d.csv", "data-columns": "usr=a"}, r"unknown role 'usr'"),
    ("columns number", {"data-path": "/d.csv", "data-columns": 5}, r"'data-columns' must be a str"),
    ("time unit", {"data-path": "/d.csv", "data-time-unit": "days"}, r"time unit must be one of"),
    ("columns on txt", {"data-path": "/d.txt", "data-columns": "user=a"}, r"apply to \.csv"),
    ("attributes number", {"data-path": "/d.csv", "item-attributes": 3}, r"'item-attributes' m"),
    ("population 0", {"data-path": "/d.csv", "population": 0}, r"'population': population \("),
    ("population text", {"data-path": "/d.csv", "population": "943"}, r"integer >= 1, got '943'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("node_config", "pattern"),
    [case[1:] for case in NODE_CASES],
    ids=[case[0] for case in NODE_CASES],
)
def test_node_config_is_refused_in_one_line(
    tmp_path: Path, node_config: dict[str, Any], pattern: str
) -> None:
    node_config = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                   for k, v in node_config.items()}  # fmt: skip
    with pytest.raises(ValueError) as caught:
        NodeDataConfig.from_node_config(node_config)
    message = str(caught.value)
    assert "node config" in message
    assert_one_line(message, pattern)


# --- checkpoints ----------------------------------------------------------------------

MODEL = ModelConfig(name="lstm", dim=8, layers=1, max_len=10, dropout=0.0)
ITEMS = ["a", "b", "c", "d", "e"]


def good_checkpoint() -> dict[str, Any]:
    state = build_model(MODEL, len(ITEMS)).state_dict()
    return Checkpoint(1, state, MODEL, ITEMS, "shop.csv").to_dict()


def saved(**changes: Any) -> Callable[[Path], None]:
    """A checkpoint dict with ``changes`` (None removes a key), saved with torch."""

    def write(path: Path) -> None:
        raw = good_checkpoint()
        for key, value in changes.items():
            if value is None:
                raw.pop(key)
            else:
                raw[key] = value
        torch.save(raw, path)

    return write


def truncated(path: Path) -> None:
    save_checkpoint(path, Checkpoint(1, good_checkpoint()["state_dict"], MODEL, ITEMS, "x"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def non_finite(value: float) -> Callable[[Path], None]:
    """A checkpoint that fits its model and catalogue, one weight set to ``value``."""

    def write(path: Path) -> None:
        raw = good_checkpoint()
        raw["state_dict"]["items.weight"].view(-1)[3] = value
        torch.save(raw, path)

    return write


def other_shape(path: Path) -> None:
    wide = build_model(ModelConfig(name="lstm", dim=16, layers=1, max_len=10), len(ITEMS))
    saved(state_dict=wide.state_dict())(path)


CHECKPOINT_CASES: list[tuple[str, Callable[[Path], None] | str | None, str]] = [
    ("missing", None, r"c\.pt: checkpoint file not found"),
    ("empty", "", r"c\.pt: not a readable checkpoint"),
    ("text", "round = 3\n", r"c\.pt: not a readable checkpoint"),
    ("truncated", truncated, r"c\.pt: not a readable checkpoint"),
    ("a list", lambda p: torch.save([1, 2], p), r"not a fedseqrec checkpoint \(no 'state_dict'\)"),
    ("no state_dict", saved(state_dict=None), r"no 'state_dict'"),
    ("state_dict a list", saved(state_dict=[1.0]), r"'state_dict' is not a mapping"),
    ("model_config unknown key", saved(model_config={"name": "lstm", "width": 8}), r"'width'"),
    ("model_config dim text", saved(model_config={"name": "lstm", "dim": "8"}),
     r"malformed checkpoint \(dim must be an integer, got '8'\)"),
    ("model_config name", saved(model_config={"name": "gru"}), r"model must be one of"),
    ("model_config a list", saved(model_config=[8]), r"c\.pt: malformed checkpoint"),
    ("item_ids a number", saved(item_ids=5), r"c\.pt: malformed checkpoint"),
    ("n_items differs", saved(n_items=9), r"n_items 9 does not match its catalogue of 5"),
    ("n_items text", saved(n_items="five"), r"n_items 'five' does not match"),
    ("repeated item ids", saved(item_ids=["a", "a", "c", "d", "e"]), r"catalogue repeats"),
    ("round text", saved(round="last"), r"c\.pt: malformed checkpoint"),
    ("other shape", other_shape, r"weights do not fit a lstm model of 5 items"),
    ("legacy alone", saved(item_ids=None, model_config=None), r"no config\.json of its run"),
    ("weights nan", non_finite(float("nan")),
     r"c\.pt: tensor 'items\.weight' holds 1 NaN or infinite value\(s\) out of 48; these "
     r"weights cannot score items"),
    ("weights -inf", non_finite(float("-inf")), r"c\.pt: tensor 'items\.weight' holds 1 NaN"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "pattern"),
    [case[1:] for case in CHECKPOINT_CASES],
    ids=[case[0] for case in CHECKPOINT_CASES],
)
def test_checkpoint_is_refused_in_one_line(
    tmp_path: Path, content: Callable[[Path], None] | str | None, pattern: str
) -> None:
    path = tmp_path / "c.pt"
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    (tmp_path / "best_checkpoint.pt").write_bytes(b"saved earlier")
    before = snapshot(tmp_path)

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    assert_one_line(str(caught.value), pattern)
    assert snapshot(tmp_path) == before


def test_legacy_checkpoint_with_a_broken_run_config(tmp_path: Path) -> None:
    saved(item_ids=None, model_config=None)(tmp_path / "c.pt")
    (tmp_path / "config.json").write_text("{not json")

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "c.pt")

    assert_one_line(str(caught.value), r"config\.json: not a readable run config")


@pytest.mark.parametrize(
    ("model", "items", "pattern"),
    [
        (dict(dim=16), ITEMS, r"model config differs: dim 8 \(checkpoint\) vs 16 \(run\)"),
        ({}, [*ITEMS, "f"], r"catalogue size differs: 5 items in the checkpoint, 6"),
        ({}, ["a", "b", "x", "d", "e"], r"catalogue differs: item index 3 is 'c' in the"),
    ],
    ids=["model differs", "catalogue size", "catalogue order"],
)
def test_initial_checkpoint_must_fit_the_run(
    tmp_path: Path, model: dict[str, Any], items: list[str], pattern: str
) -> None:
    path = tmp_path / "c.pt"
    saved()(path)
    config = ModelConfig(**{**MODEL.__dict__, **model})

    with pytest.raises(CheckpointError) as caught:
        load_initial_checkpoint(str(path), config, items)

    assert_one_line(str(caught.value), rf"initial-checkpoint .*c\.pt: {pattern}")


# --- ledgers (the tamper corpus, test_ledger_tamper.py, covers edited run folders) -----

LEDGER_LINE = (
    '{"accountant": "rdp", "budget_epsilon": null, "clip_norm": 1.0, "delta": 1e-05, '
    '"epsilon": 0.5, "mechanism": "dp-fedavg", "noise_multiplier": 1.0, "population": 943, '
    '"prev_hash": "' + "0" * 64 + '", "randomness": "os-entropy", "round": 1, "run_id": "r", '
    '"sampling_rate": 1.0, "steps": 1, "time": 1.0, "unit": "user", "who": "server"}'
)

LEDGER_CASES = [
    ("not json", "not json\n" + LEDGER_LINE + "\n", r"not JSON"),
    ("a list", "[1, 2]\n", r"a ledger line must be a JSON object"),
    ("missing field", LEDGER_LINE.replace('"round": 1, ', ""), r"field 'round' is missing"),
    ("unknown field", LEDGER_LINE.replace("{", '{"x": 1, ', 1), r"field 'x' is not a ledger"),
    ("round text", LEDGER_LINE.replace('"round": 1', '"round": "1"'), r"field 'round' must be"),
    ("delta 2", LEDGER_LINE.replace('"delta": 1e-05', '"delta": 2'), r"field 'delta' must be"),
    ("population text", LEDGER_LINE.replace("943", '"943"'), r"field population"),
    ("bad mechanism", LEDGER_LINE.replace("dp-fedavg", "magic"), r"field 'mechanism'"),
]


@pytest.mark.parametrize(
    ("content", "pattern"), [c[1:] for c in LEDGER_CASES], ids=[c[0] for c in LEDGER_CASES]
)
def test_ledger_line_is_refused_naming_file_and_line(
    tmp_path: Path, content: str, pattern: str
) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(content + "\n")
    before = snapshot(tmp_path)

    with pytest.raises(LedgerError) as caught:
        read_ledger(path)

    assert_one_line(str(caught.value), r"ledger\.jsonl, line 1: " + pattern)
    assert snapshot(tmp_path) == before


# --- item catalogues --------------------------------------------------------------------

CATALOGUE_CASES = [
    ("empty", "", r"catalogue\.txt: the item catalogue is empty"),
    ("blank line", "a\n\nb\n", r"catalogue\.txt, line 2: empty item id"),
    ("repeated id", "a\nb\na\n", r"line 3: item id 'a' repeats line 1"),
    ("not utf-8", b"a\n\xff\xfe\n", r"catalogue\.txt: cannot read the item catalogue"),
    ("id too long", "a\n" + "x" * 65 + "\n", r"line 2: field 'item' is over 64 characters"),
    ("control character", "a\nb\x01c\n", r"line 2: field 'item' contains a control character"),
    ("negative id", "1\n-5\n", r"line 2: field 'item' must not be a negative number"),
]


@pytest.mark.parametrize(
    ("content", "pattern"), [c[1:] for c in CATALOGUE_CASES], ids=[c[0] for c in CATALOGUE_CASES]
)
def test_catalogue_file_is_refused_naming_the_line(
    tmp_path: Path, content: str | bytes, pattern: str
) -> None:
    path = tmp_path / "catalogue.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())

    with pytest.raises(ValueError) as caught:
        ItemCatalogue.from_file(path)

    assert_one_line(str(caught.value), pattern)


# --- fedseqrec-train's TOML config --------------------------------------------------------

TRAIN_CASES = [
    ("bad toml", "epochs = = 1\n", r"train\.toml: invalid TOML"),
    ("unknown key", "epoch = 1\n", r"train\.toml: unknown setting\(s\) epoch"),
    ("dim text", 'dim = "big"\n', r"dim must be an integer, got 'big'"),
    ("epochs 0", "epochs = 0\n", r"epochs, batch_size and eval_every must be positive"),
    ("seed -1", "seed = -1\n", r"seed must be in 0\.\.4294967295, got -1"),
    ("heads 3", 'model = "attention"\ndim = 64\nheads = 3\n', r"heads to divide dim"),
    ("lr nan", "lr = nan\n", r"lr must be a finite number, got nan"),
    ("out number", "out = 5\n", r"train\.toml: out must be a string, got 5"),
    ("threads 0", "threads = 0\n", r"threads must be >= 1, got 0"),
    ("text-init text", 'text-init = "yes"\n', r"train\.toml: text_init must be true or false"),
    ("model number", "model = 3\n", r"train\.toml: model must be a string, got 3"),
    ("not utf-8", b"dim = \xff\n", r"train\.toml: cannot read the config file"),
]


@pytest.mark.parametrize(
    ("content", "pattern"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_config_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, pattern: str
) -> None:
    config = tmp_path / "train.toml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "earlier.txt").write_text("kept")
    before = snapshot(tmp_path)

    code = train_main(["--config", str(config), "--out", str(runs)])

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("fedseqrec-train: error: ")
    assert_one_line(line, pattern)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("out", "pattern"),
    [("notes.txt", r"--out .*notes\.txt: is a file, not a folder for run folders$"),
     ("notes.txt/runs", r"--out .*runs: lies under the file .*notes\.txt, not a folder")],
    ids=["a file", "under a file"],
)  # fmt: skip
def test_train_out_must_be_a_folder_before_training_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    out: str,
    pattern: str,
) -> None:
    monkeypatch.setattr(train_cli, "load_data", _no_process)
    (tmp_path / "notes.txt").write_text("kept")
    before = snapshot(tmp_path)

    code = train_main(["--out", str(tmp_path / out), "--epochs", "1"])

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("fedseqrec-train: error: ")
    assert_one_line(line, pattern)
    assert snapshot(tmp_path) == before


# --- every command line, in a subprocess: exit 2, no traceback ---------------------------


def _bad_files(folder: Path) -> None:
    (folder / "notes.pt").write_text("not a checkpoint")
    (folder / "ledger.jsonl").write_text("not json\n")
    (folder / "train.toml").write_text('dim = "big"\n')
    non_finite(float("nan"))(folder / "nan.pt")


CLI_CASES = [
    ("launch seed -1", ["-m", "simulations.launch", "--preset", "ml100k-fedavg", "--set",
                        "seed=-1", "--results", "{tmp}/results"], r"seed must be in 0\.\."),
    ("launch heads 3", ["-m", "simulations.launch", "--preset", "ml100k-fedavg", "--set",
                        "heads=3", "--set", "dim=64", "--results", "{tmp}/results"],
     r"heads to divide dim"),
    ("launch dp no noise", ["-m", "simulations.launch", "--preset", "ml100k-dp", "--set",
                            "target-epsilon=0", "--results", "{tmp}/results"],
     r"dp = 'user' needs noise-multiplier > 0 or target-epsilon > 0"),
    ("deploy heads 3", ["-m", "deploy.run", "--connection", "x", "--nodes", "2", "--preset",
                        "ml100k-fedavg", "--set", "heads=3", "--set", "dim=64",
                        "--results", "{tmp}/results"], r"heads to divide dim"),
    ("deploy delta", ["-m", "deploy.run", "--connection", "x", "--nodes", "2", "--preset",
                      "ml100k-fedavg", "--set", "dp='local'", "--set", "noise-multiplier=1.0",
                      "--set", "delta=0.01", "--set", "population=20", "--set",
                      "catalogue='/srv/c.txt'", "--results", "{tmp}/results"],
     r"delta 1e-2 above 1 / \(10 x 20\)"),
    ("audit", ["-m", "common.privacy.report", "{tmp}/ledger.jsonl"], r"line 1: not JSON"),
    ("recommend", ["-m", "client.recommend", "--checkpoint", "{tmp}/notes.pt", "--items", "1"],
     r"notes\.pt: not a readable checkpoint"),
    ("recommend nan", ["-m", "client.recommend", "--checkpoint", "{tmp}/nan.pt", "--items", "a"],
     r"nan\.pt: tensor 'items\.weight' holds 1 NaN or infinite value"),
    ("train out is a file", ["-m", "common.training.cli", "--out", "{tmp}/notes.pt"],
     r"--out .*notes\.pt: is a file, not a folder for run folders"),
    ("train", ["-m", "common.training.cli", "--config", "{tmp}/train.toml", "--out",
               "{tmp}/results"], r"dim must be an integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "pattern"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_command_line_exits_2_without_traceback(
    tmp_path: Path, args: list[str], pattern: str
) -> None:
    _bad_files(tmp_path)
    (tmp_path / "results").mkdir()
    before = snapshot(tmp_path)

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip

    assert time.monotonic() - started < 30  # interpreter start and imports only
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and re.search(pattern, errors[0]), done.stderr
    assert snapshot(tmp_path) == before
    assert not list((tmp_path / "results").iterdir())  # no run folder, no superlink.log


def test_corpus_is_large_and_names_are_unique() -> None:
    groups = [RUN_CONFIG_CASES, LAUNCH_CASES, NODE_CASES, CHECKPOINT_CASES, LEDGER_CASES,
              CATALOGUE_CASES, TRAIN_CASES, CLI_CASES]  # fmt: skip
    assert sum(len(group) for group in groups) >= 60
    for group in groups:
        assert len({case[0] for case in group}) == len(group)
