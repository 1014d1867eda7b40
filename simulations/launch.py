"""Launch a federated simulation from a preset and check its outcome.

``python -m simulations.launch --preset ml100k-fedavg [--set key=value ...] [--results ROOT]``
``python -m simulations.launch --resume RUN_DIR`` (a killed run, :mod:`server.resume`)

The launcher resolves the run config (app defaults < preset < ``--set``), creates
``ROOT/<run-id>/`` with ``config.json``, starts its own local SuperLink (simulation
runtime, runtime dependency installation off), submits the app with
``flwr run <app> <connection> --stream`` and streams the log. ``flwr run`` exits 0 even
when the run failed, so the launcher then reads ``summary.json`` itself and exits
non-zero with the reason unless the ServerApp completed. Finally it plots validation
NDCG@10 and train loss per round.

One writer per run folder: the launcher holds the folder's ``launcher.lock`` for its
whole life (the ServerApp holds ``server.lock``), and every part of the simulation lives
and dies together (:mod:`simulations.supervision`): when one dies the launcher stops
the rest, records why in ``stops.jsonl`` and prints one line naming the part, the last
saved round and the way on.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tomllib
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import tomli_w

from common.data.loaders import BUILTIN_DATASETS, builtin_path
from common.federation.config import FederatedConfig
from common.federation.preflight import check_simulation_inputs
from common.storage.run_folder import new_run_dir, write_json
from common.storage.run_lock import EXIT_GRACE, LAUNCHER_LOCK, RunFolderBusy, RunFolderLock
from server.resume.preflight import keep_earlier_logs, resumed_run
from server.resume.stops import record_stop
from simulations.app_files import staged_app
from simulations.flower_log import stream_flwr_run
from simulations.outcome import (
    LaunchError,
    check_outcome,
    failure_line,
    outcome_word,
    way_on,
    write_plots,
)
from simulations.superlink import (
    CONNECTION,
    LocalSuperLink,
    SuperLinkError,
    add_ray_arguments,
    ensure_connection,
    federation_config,
    simulation_env,
)
from simulations.supervision import RUN_MARKER, PartDeath, RunSupervisor

logger = logging.getLogger("fedseqrec.launch")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = Path(__file__).resolve().parent / "presets"
LAUNCHER_KEYS = ("results-dir",)
AUDIT_FILE = "audit.json"  # the privacy audit of a run's ledgers, in its run folder


class LaunchConfigError(LaunchError):
    """The config or an input it names is bad: refused before any process starts (exit 2)."""


CONFIG_ERROR = 2  # exit status of a refused config; a failed run exits 1


def app_defaults(app_dir: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` defaults of the Flower app."""
    with (app_dir / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def load_preset(name: str) -> tuple[str, dict[str, Any]]:
    """Read a preset by name (``simulations/presets/NAME.toml``) or path; returns (label, keys)."""
    path = Path(name) if name.endswith(".toml") else PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
        raise LaunchConfigError(f"preset {name!r} not found (known presets: {known})")
    try:
        return path.stem, tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise LaunchConfigError(f"preset {path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise LaunchConfigError(f"preset {path}: invalid TOML ({error})") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are TOML literals, anything else is a string."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise LaunchConfigError(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = raw.strip()
    return overrides


def resolve_config(
    defaults: dict[str, Any], preset: dict[str, Any], overrides: dict[str, Any], source: str
) -> dict[str, Any]:
    """Defaults < preset < overrides, refusing unknown and launcher-owned keys."""
    for origin, keys in ((f"preset {source}", preset), ("--set", overrides)):
        unknown = sorted(set(keys) - set(defaults))
        if unknown:
            close = sorted({m for key in unknown for m in get_close_matches(key, defaults, 3)})
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise LaunchConfigError(
                f"{origin}: unknown key(s) {', '.join(unknown)} ({hint}every key is in "
                f"docs/reference.md)"
            )
        owned = sorted(set(keys) & set(LAUNCHER_KEYS))
        if owned:
            raise LaunchConfigError(
                f"{origin}: {', '.join(owned)} is set by the launcher (use --results)"
            )
    resolved = {**defaults, **preset, **overrides}
    resolved["dataset"] = resolve_dataset(str(resolved["dataset"]))
    if resolved.get("initial-checkpoint"):
        checkpoint = Path(str(resolved["initial-checkpoint"])).expanduser().resolve()
        if not checkpoint.is_file():
            raise LaunchConfigError(f"initial-checkpoint {str(checkpoint)!r}: file not found")
        resolved["initial-checkpoint"] = str(checkpoint)
    try:
        FederatedConfig.from_run_config(resolved)
    except ValueError as error:
        raise LaunchConfigError(f"invalid config: {error}") from None
    return resolved


def resolve_dataset(dataset: str) -> str:
    """Absolute path of a data set: the app runs from an installed copy without data/."""
    if dataset in BUILTIN_DATASETS:
        return str(builtin_path(dataset))
    path = Path(dataset).expanduser().resolve()
    if not path.is_file():
        raise LaunchConfigError(f"dataset {dataset!r}: file not found")
    return str(path)


def run_simulation(
    config: dict[str, Any],
    results_dir: Path,
    num_supernodes: int,
    port: int,
    ray_address: str = "",
    ray_cpus: int = 0,
) -> tuple[int, PartDeath | None]:
    """Start a SuperLink, submit the app with ``flwr run --stream`` and stream its log.

    ``ray_address`` names a running Ray cluster (``ray start --head`` printed it) for the
    simulation's clients; empty, the simulation starts Ray on this machine alone.
    ``ray_cpus`` > 0 caps the CPUs (hence client workers) of a Ray of its own.
    Returns ``flwr run``'s exit code and the part of the simulation that died on its own,
    if one did; every process of the launch is stopped on the way out, whatever happened.
    """
    run_config_path = results_dir / "run_config.toml"
    run_config_path.write_text(tomli_w.dumps(config))
    env = simulation_env(ray_address)
    ensure_connection(Path(env["FLWR_HOME"]), port)
    federation = federation_config(num_supernodes, ray_cpus, cluster=bool(ray_address))
    with (
        staged_app(PROJECT_ROOT) as app,
        LocalSuperLink(port, results_dir / "superlink.log", env, results_dir, app) as superlink,
    ):
        assert superlink.process is not None
        command = [
            str(Path(sys.executable).with_name("flwr")), "run", str(app), CONNECTION, "--stream",
            "--run-config", str(run_config_path), "--federation-config", federation,
        ]  # fmt: skip
        supervisor = RunSupervisor(superlink.process, env[RUN_MARKER], results_dir / "summary.json")
        try:
            code = stream_flwr_run(
                command, env, PROJECT_ROOT, results_dir / "flwr.log", on_start=supervisor.watch
            )
        finally:
            supervisor.stop()
        return code, supervisor.death or supervisor.check()


def privacy_report(results_dir: Path) -> None:
    """Audit the run's ledgers with the independent accountant and print the guarantee.

    The report also goes to ``audit.json`` in the run folder; a failed audit fails the
    launch, because the epsilon the run printed would then not be supported.
    """
    from common.privacy.report import render, report_dict
    from common.privacy.run_audit import audit_path

    report = audit_path(results_dir)  # cross-checked with the run folder
    write_json(results_dir / AUDIT_FILE, report_dict(report))
    print(render(report))
    if not report.passed:
        raise LaunchError(f"privacy audit failed, see {results_dir / AUDIT_FILE}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the launcher."""
    parser = argparse.ArgumentParser(prog="python -m simulations.launch", description=__doc__)
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--preset", help="name in simulations/presets or a .toml path")
    start.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="carry on a killed run in its folder"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument("--port", type=port_number, default=39291, help="local SuperLink port")
    add_ray_arguments(parser)
    return parser


def port_number(text: str) -> int:
    """``--port``: a TCP port, 1-65535 (argparse turns the ValueError into exit 2)."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port (1-65535)")
    return port


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve, run and check one simulation; returns its summary."""
    if args.resume is not None:
        return launch_resumed(args)
    label, preset = load_preset(args.preset)
    overrides = parse_overrides(args.set)
    if "resume-from" in {**preset, **overrides}:
        raise LaunchConfigError(
            "resume-from: use --resume RUN_DIR (the run's own config and folder)"
        )
    config = resolve_config(app_defaults(), preset, overrides, label)
    n_users = check_inputs(config)
    folder = run_folder(args.results, label)
    with RunFolderLock(folder, LAUNCHER_LOCK, "launcher"):
        return launch_in(folder, label, config, n_users, args.port, args.ray_address or "",
                         args.ray_cpus or 0)  # fmt: skip


def run_folder(root: Path, label: str) -> Path:
    """A new run folder under ``root`` (``--results``), or a LaunchConfigError saying why not."""
    try:
        return new_run_dir(root.resolve(), label)
    except OSError as error:
        raise LaunchConfigError(
            f"--results {root}: cannot create a run folder there ({error.strerror})"
        ) from None


def launch_resumed(args: argparse.Namespace) -> dict[str, Any]:
    """Carry on a killed run in its own folder, with its own config (no ``--set``)."""
    if args.set:
        raise LaunchConfigError("--resume runs the saved config unchanged: drop --set")
    folder = Path(args.resume).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise LaunchConfigError(f"cannot resume: {folder / 'config.json'}: not found; "
                                "--resume takes a run folder")  # fmt: skip
    lock = RunFolderLock(folder, LAUNCHER_LOCK, "launcher", wait=EXIT_GRACE)
    try:
        lock.acquire()  # one writer: before anything is read, checked or written
    except RunFolderBusy as error:
        raise LaunchConfigError(f"cannot resume: {error}") from None
    try:
        try:
            results_dir, label, config = resumed_run(folder)
            FederatedConfig.from_run_config(config)
        except ValueError as error:  # ResumeError, or a config this version refuses
            raise LaunchConfigError(f"cannot resume: {error}") from None
        n_users = check_inputs(config)
        keep_earlier_logs(results_dir)
        return launch_in(results_dir, label, config, n_users, args.port,
                         args.ray_address or "", args.ray_cpus or 0)  # fmt: skip
    finally:
        lock.release()


def check_inputs(config: dict[str, Any]) -> int:
    """Read the data set and every file the config names before starting; returns users."""
    federated = FederatedConfig.from_run_config(config)
    if federated.deployment_nodes:
        raise LaunchConfigError(
            "deployment-nodes is for deployments (python -m deploy.run --nodes N); a "
            "simulation runs one SuperNode per partition"
        )
    try:
        return check_simulation_inputs(federated)
    except ValueError as error:  # DataFormatError, CheckpointError, DeltaError, ...
        raise LaunchConfigError(str(error)) from None


def launch_in(
    results_dir: Path,
    label: str,
    config: dict[str, Any],
    n_users: int,
    port: int,
    ray_address: str = "",
    ray_cpus: int = 0,
) -> dict[str, Any]:
    """Run a resolved config in an existing run folder, check it, plot, audit its ledgers."""
    federated = FederatedConfig.from_run_config(config)
    num_supernodes = federated.num_partitions(n_users)
    config = {**config, "results-dir": str(results_dir)}
    write_json(
        results_dir / "config.json",
        {"preset": label, "run_config": config, "num_supernodes": num_supernodes},
    )
    logger.info("run %s: %d users -> %d clients", results_dir, n_users, num_supernodes)
    code, death = run_simulation(config, results_dir, num_supernodes, port, ray_address, ray_cpus)
    try:
        log = results_dir / "flwr.log"
        if death is not None:
            raise LaunchError(f"{death}; every process of the run was stopped (see {log})")
        if code != 0:
            raise LaunchError(
                f"flwr run exited with code {code}: {failure_line(log)!r} (see {log})"
            )
        summary = check_outcome(results_dir)  # its errors name the log too
    except LaunchError as error:
        record_stop(results_dir, death.part if death else "ServerApp", str(error))
        raise LaunchError(f"{error}{way_on(results_dir)}") from None
    write_plots(results_dir)
    if (results_dir / "ledger").is_dir():
        privacy_report(results_dir)
    logger.info(
        "%s: released round %d (%s), test HR@10 %.4f NDCG@10 %.4f -> %s",
        outcome_word(summary),
        summary["released_round"],
        summary["release_selection"],
        summary["test"]["hr@10"],
        summary["test"]["ndcg@10"],
        results_dir,
    )
    from server.side_by_side import side_by_side_lines  # torch: only once a run is done

    for line in side_by_side_lines(summary):
        print(line)
    return summary


def _exit_143(signum: int, frame: object) -> None:
    """SIGTERM handler: raise SystemExit(143) (128 + SIGTERM), which unwinds ``finally``."""
    sys.exit(143)


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind this process like Ctrl-C (exit status 143), so every
    :func:`launch` running in it stops its SuperLink and simulation on the way out.

    Call it from the main thread of any program that launches simulations.
    """
    signal.signal(signal.SIGTERM, _exit_143)


def main(argv: list[str] | None = None) -> int:
    """Entry point; every failure is one line on stderr: exit 2 for a refused config
    (nothing started, nothing written), 1 for a run that failed."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    unwind_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        launch(args)
    except LaunchConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    except RunFolderBusy as error:  # a second writer of a new run folder (a race)
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    except (LaunchError, SuperLinkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
