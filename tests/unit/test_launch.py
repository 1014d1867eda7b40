"""The simulation launcher: config resolution, clear errors, outcome checks."""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
import tomllib
from pathlib import Path

import pytest

from common.federation.config import FederatedConfig
from simulations.launch import (
    PRESET_DIR,
    LaunchError,
    app_defaults,
    build_parser,
    check_outcome,
    load_preset,
    main,
    parse_overrides,
    resolve_config,
    unwind_on_sigterm,
)
from simulations.process_tree import stop_process_group
from simulations.superlink import (
    CONNECTION,
    RAY_CPUS_VARIABLE,
    cluster_address,
    ensure_connection,
    federation_config,
    simulation_env,
)
from tests.helpers import running, start_session_tree

# Like the SuperLink: its child (SuperExec) starts a session of its own, and a grandchild
# (flwr-simulation, Ray) lives in that session; this one ignores SIGTERM.


@pytest.mark.parametrize("name", ["ml100k-fedavg", "beauty-fedavg", "beauty-fedadam"])
def test_presets_resolve_to_valid_configs(name: str) -> None:
    label, preset = load_preset(name)
    config = resolve_config(app_defaults(), preset, {}, label)
    federated = FederatedConfig.from_run_config(config)
    assert Path(federated.dataset).is_file()
    assert federated.strategy == preset["strategy"]


def test_overrides_win_and_are_typed() -> None:
    overrides = parse_overrides(["lr=0.5", "num-server-rounds=3", "model=lstm"])
    assert overrides == {"lr": 0.5, "num-server-rounds": 3, "model": "lstm"}
    _, preset = load_preset("ml100k-fedavg")
    config = resolve_config(app_defaults(), preset, overrides, "ml100k-fedavg")
    assert (config["lr"], config["num-server-rounds"], config["model"]) == (0.5, 3, "lstm")


def test_unknown_key_in_a_preset_is_one_clear_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text('strategy = "fedavg"\nlearning-rate = 0.1\n')

    code = main(["--preset", str(preset), "--results", str(tmp_path)])

    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1
    assert lines[0] == (
        "error: preset bad: unknown key(s) learning-rate (every key is in docs/reference.md)"
    )


def test_a_misspelt_key_is_answered_with_the_keys_it_resembles() -> None:
    with pytest.raises(LaunchError, match=r"unknown key\(s\) clip-nrom \(did you mean clip-norm\?"):
        resolve_config(app_defaults(), {}, {"clip-nrom": 1.0}, "x")


def test_bad_values_and_launcher_keys_are_refused() -> None:
    defaults = app_defaults()
    with pytest.raises(LaunchError, match="invalid config: strategy must be one of"):
        resolve_config(defaults, {"strategy": "fedsgd"}, {}, "x")
    with pytest.raises(LaunchError, match="results-dir is set by the launcher"):
        resolve_config(defaults, {}, {"results-dir": "/tmp/x"}, "x")
    with pytest.raises(LaunchError, match="preset 'nope' not found"):
        load_preset("nope")
    with pytest.raises(LaunchError, match="--set expects key=value"):
        parse_overrides(["lr"])


def test_outcome_needs_a_completed_summary(tmp_path: Path) -> None:
    log = "Traceback:\n  File x\nValueError: dim 8 must be divisible by heads 3\nSee docs\n\n"
    (tmp_path / "flwr.log").write_text(log)
    with pytest.raises(LaunchError, match="missing; reason: 'ValueError: dim 8 must be divisible"):
        check_outcome(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    with pytest.raises(LaunchError, match="run failed: boom"):
        check_outcome(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert check_outcome(tmp_path)["status"] == "completed"


def test_connection_is_added_without_losing_other_connections(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )

    ensure_connection(tmp_path, 40111)

    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["local"] == {"address": ":local:"}
    assert config["superlink"]["default"] == "local"
    assert config["superlink"][CONNECTION] == {"address": "127.0.0.1:40111", "insecure": True}


def test_presets_folder_holds_the_three_presets() -> None:
    assert {p.stem for p in PRESET_DIR.glob("*.toml")} >= {
        "ml100k-fedavg",
        "beauty-fedavg",
        "beauty-fedadam",
        "ml100k-dp-scorer",
    }


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_every_shipped_preset_resolves_to_a_valid_config(name: str) -> None:
    source, preset = load_preset(name)
    config = FederatedConfig.from_run_config(resolve_config(app_defaults(), preset, {}, source))
    if config.statistics:  # the scorer needs the data set's public attributes
        assert config.item_attributes


def test_stopping_the_superlink_stops_the_sessions_its_descendants_started(
    tmp_path: Path,
) -> None:
    # Prepare: root -> child in a new session -> grandchild that ignores SIGTERM
    root, tree = start_session_tree(tmp_path)
    sessions = {os.getsid(pid) for pid in tree}
    # Execute
    stop_process_group(root, timeout=1.0)
    # Assert: all three are gone, the one ignoring SIGTERM by SIGKILL after the timeout
    assert len(sessions) == 2 and root.pid in tree
    assert root.returncode == -signal.SIGTERM
    assert [pid for pid in tree if running(pid)] == []


def test_sigterm_unwinds_like_ctrl_c_once_installed() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        unwind_on_sigterm()
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs in the main thread at the next instruction
        assert stopped.value.code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)


class HandlerInstalled(Exception):
    """Raised by the stand-in for unwind_on_sigterm, before a benchmark does any work."""


@pytest.mark.parametrize(
    "name", ["benchmarks.privacy", "benchmarks.federated", "benchmarks.compression",
             "benchmarks.canary_audit", "benchmarks.faults"],
)  # fmt: skip
def test_benchmarks_that_launch_simulations_unwind_on_sigterm(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a benchmark killed with SIGTERM must stop its SuperLink and simulation as well
    module = importlib.import_module(name)

    def installed() -> None:
        raise HandlerInstalled

    monkeypatch.setattr(module, "unwind_on_sigterm", installed)
    with pytest.raises(HandlerInstalled):
        module.main()


def test_ray_address_flag_reaches_ray_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:1")  # a stray shell setting is not used
    assert simulation_env()["RAY_ADDRESS"] == "local"  # nor a cluster `ray start` left
    assert simulation_env("10.0.0.5:6379")["RAY_ADDRESS"] == "10.0.0.5:6379"
    args = build_parser().parse_args(["--preset", "x", "--ray-address", "head.local:6379"])
    assert args.ray_address == "head.local:6379"
    assert build_parser().parse_args(["--preset", "x"]).ray_address is None
    for bad in ("6379", "host:", "host:port", "host:70000", ":6379"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            cluster_address(bad)


def test_ray_cpus_caps_the_workers_of_the_launchs_own_ray_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(RAY_CPUS_VARIABLE, raising=False)
    assert build_parser().parse_args(["--preset", "x"]).ray_cpus is None
    assert build_parser().parse_args(["--preset", "x", "--ray-cpus", "1"]).ray_cpus == 1
    monkeypatch.setenv(RAY_CPUS_VARIABLE, "3")  # the environment gives the default
    assert build_parser().parse_args(["--preset", "x"]).ray_cpus == 3
    assert build_parser().parse_args(["--preset", "x", "--ray-cpus", "2"]).ray_cpus == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args(["--preset", "x", "--ray-cpus", bad])
        assert stopped.value.code == 2
        assert f"{bad!r} is not a number of CPUs >= 1" in capsys.readouterr().err
    plain = federation_config(4)
    assert "num-supernodes=4 client-resources-num-cpus=1" in plain
    assert "init-args-num-cpus" not in plain
    assert federation_config(4, 1).endswith(" init-args-num-cpus=1")
    assert federation_config(4, 1, cluster=True) == plain  # a cluster has its own CPUs
