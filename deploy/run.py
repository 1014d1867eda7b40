"""Submit a federated run to a deployed SuperLink and check its outcome.

``python -m deploy.run --connection fedseqrec-edge --nodes 2 --preset PRESET [--set k=v ...]``

The deployment counterpart of :mod:`simulations.launch`: the same presets and
``--set`` overrides, resolved the same way, then ``flwr run <app> <connection> --stream``
against a SuperLink named in ``$FLWR_HOME/config.toml`` (TLS and the CA there). The
ServerApp runs on the SuperLink's machine and writes ``ROOT/<preset>-<time>/`` there
(``--results``, an absolute path on that machine). ``flwr run`` exits 0 even when a run
failed, so the outcome is read from ``summary.json``, which names failed nodes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import tomli_w

from common.federation.config import FederatedConfig
from common.federation.preflight import check_deployment_inputs
from common.storage.run_folder import write_json
from server.resume.preflight import keep_earlier_logs
from simulations.app_files import staged_app
from simulations.flower_log import KILLED, stream_flwr_run
from simulations.launch import (
    CONFIG_ERROR,
    PROJECT_ROOT,
    LaunchConfigError,
    LaunchError,
    app_defaults,
    check_outcome,
    failure_line,
    load_preset,
    parse_overrides,
    resolve_config,
    run_folder,
    write_plots,
)
from simulations.superlink import flower_env

logger = logging.getLogger("fedseqrec.deploy")


def deployment_config(preset: str, overrides: list[str], nodes: int) -> tuple[str, dict[str, Any]]:
    """Resolve app defaults < preset < ``--set`` and wait for ``nodes`` SuperNodes."""
    if nodes < 1:
        raise LaunchConfigError(f"--nodes must be >= 1, got {nodes}")
    label, keys = load_preset(preset)
    parsed = parse_overrides(overrides)
    parsed["deployment-nodes"] = nodes
    config = resolve_config(app_defaults(), keys, parsed, label)
    try:
        check_deployment_inputs(FederatedConfig.from_run_config(config))
    except ValueError as error:  # DeltaError, CheckpointError, ...
        raise LaunchConfigError(str(error)) from None
    return label, config


def submit_run(
    connection: str,
    config: dict[str, Any],
    results_dir: Path,
    env: dict[str, str],
    timeout: float | None = None,
) -> dict[str, Any]:
    """``flwr run --stream`` the app with ``config``; returns the completed run's summary.

    With ``timeout`` (seconds), a run still streaming then is given up: ``flwr run`` is
    stopped and a LaunchError says so (the run itself ends with its SuperLink).
    """
    config = {**config, "results-dir": str(results_dir)}
    if config.get("resume-from"):  # the killed submission's log stays, as flwr.1.log
        keep_earlier_logs(results_dir)
    write_json(results_dir / "config.json", {"connection": connection, "run_config": config})
    run_config_path = results_dir / "run_config.toml"
    run_config_path.write_text(tomli_w.dumps(config))
    log_path = results_dir / "flwr.log"
    with staged_app(PROJECT_ROOT) as app:
        command = [
            str(Path(sys.executable).with_name("flwr")), "run", str(app), connection,
            "--stream", "--run-config", str(run_config_path),
        ]  # fmt: skip
        code = stream_flwr_run(command, env, PROJECT_ROOT, log_path, timeout)
    if code == KILLED and timeout:
        raise LaunchError(f"run did not finish within {timeout:.0f}s (see {log_path})")
    if code != 0:
        raise LaunchError(
            f"flwr run exited with code {code}: {failure_line(log_path)!r} (see {log_path})"
        )
    summary = check_outcome(results_dir)
    write_plots(results_dir)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="python -m deploy.run", description=__doc__)
    parser.add_argument("--connection", required=True, help="SuperLink connection name")
    parser.add_argument("--nodes", type=int, required=True, help="SuperNodes to wait for")
    parser.add_argument("--preset", required=True, help="name in simulations/presets or a path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``error:`` line and exit 2 on bad input, 1 on a failed run."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    args = build_parser().parse_args(argv)
    try:
        label, config = deployment_config(args.preset, args.set, args.nodes)
        resumed = str(config.get("resume-from") or "")  # a killed run carries on in its folder
        results_dir = Path(resumed) if resumed else run_folder(args.results, label)
    except LaunchConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    try:
        summary = submit_run(args.connection, config, results_dir, flower_env())
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logger.info(
        "done: released round %d (%s), test HR@10 %.4f NDCG@10 %.4f, %d node error(s) -> %s",
        summary["released_round"],
        summary["release_selection"],
        summary["test"]["hr@10"],
        summary["test"]["ndcg@10"],
        len(summary.get("node_errors", [])),
        results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
