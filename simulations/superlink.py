"""A local Flower SuperLink owned by the launcher, and the connection that reaches it.

flwr 1.41 runs every app through a SuperLink's Control API; for the address
``:local:`` it would start a detached SuperLink that outlives the command and installs
app dependencies at run time. The launcher instead starts its own SuperLink
(simulation runtime, in-memory state, runtime installation disabled) as a child,
stops it and the simulation it started when the run ends, and names it in
``$FLWR_HOME/config.toml`` as the connection ``fedseqrec-sim``. Simulation settings
(number of SuperNodes, client resources) travel per run with ``flwr run
--federation-config``, which is where 1.41 wants them (``options.*`` in config.toml is
deprecated).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from common.storage.atomic import write_text_atomically
from simulations.process_tree import stop_process_group
from simulations.supervision import RUN_MARKER, stop_marked
from simulations.watchdog import release_watchdog, start_watchdog

CONNECTION = "fedseqrec-sim"
STARTUP_SECONDS = 60.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SuperLinkError(RuntimeError):
    """The local SuperLink could not be started or reached."""


def flower_env() -> dict[str, str]:
    """Environment for flwr and the SuperLink: project FLWR_HOME, no update check or
    telemetry, no runtime dependency installation."""
    env = dict(os.environ)
    env.setdefault("FLWR_HOME", str(PROJECT_ROOT / ".flwr"))
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU actors; silences a warning
    # flwr starts flower-superexec and flwr-simulation by name: use this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def simulation_env(ray_address: str = "") -> dict[str, str]:
    """The environment of a launch's processes: Flower's, a fresh run marker, and
    ``RAY_ADDRESS`` (flwr 1.41 has no setting for a cluster; the simulation's
    ``ray.init()`` reads it): the cluster's address, else ``local``, a Ray of this launch's
    own. Left unset, ``ray.init()`` would join whatever cluster ``ray start`` last started
    on this machine (``/tmp/ray/ray_current_cluster``), or fail if that one is gone.

    ``SPT_NOENV=1`` keeps the marker readable: Ray titles its agents with setproctitle,
    which otherwise writes the title over the process's environment block, so
    ``/proc/PID/environ`` of ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` lost the
    marker and those two outlived every stop of the launch.

    Ray's worker prestart is off: Flower's clients run in workers of their own runtime
    environment, so the idle workers Ray starts ahead (one per CPU, about 0.5 s of CPU
    each) were never used."""
    return {
        **flower_env(),
        RUN_MARKER: uuid.uuid4().hex,
        "RAY_ADDRESS": ray_address or "local",
        "SPT_NOENV": "1",
        "RAY_enable_worker_prestart": "0",
        "RAY_prestart_worker_first_driver": "0",
    }


RAY_CPUS_VARIABLE = "FEDSEQREC_RAY_CPUS"  # the default of the launcher's --ray-cpus


def ray_cpus(text: str) -> int:
    """``--ray-cpus`` (or ``FEDSEQREC_RAY_CPUS``): a whole number of CPUs, at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of CPUs >= 1 (--ray-cpus or {RAY_CPUS_VARIABLE})"
        )
    return int(text)


def federation_config(num_supernodes: int, ray_cpus: int = 0, cluster: bool = False) -> str:
    """Flower's simulation settings for one launch: one CPU per client, so Ray runs one
    client worker per CPU it has. ``ray_cpus`` > 0 gives this machine's own Ray that many
    CPUs (hence workers) instead of all of them; a cluster (``cluster``) has its own."""
    settings = (
        f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
        'client-resources-num-gpus=0.0 init-args-logging-level="WARNING"'
    )
    return settings if cluster or not ray_cpus else f"{settings} init-args-num-cpus={ray_cpus}"


def cluster_address(text: str) -> str:
    """``--ray-address``: ``HOST:PORT`` of a Ray cluster's head (GCS), e.g. 10.0.0.5:6379."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or '"' in host:
        raise ValueError(f"{text!r} is not HOST:PORT (the address `ray start --head` printed)")
    return text.strip()


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray-address`` and ``--ray-cpus``, the same for every command that launches a
    simulation (``simulations.launch``, ``simulations.canary_audit``)."""
    parser.add_argument(
        "--ray-address", type=cluster_address, default=None, metavar="HOST:PORT",
        help="run the clients on this Ray cluster (docs/simulations.md, Ray cluster)",
    )  # fmt: skip
    parser.add_argument(
        "--ray-cpus", type=ray_cpus, default=os.environ.get(RAY_CPUS_VARIABLE), metavar="N",
        help=f"CPUs (one client worker each) of this machine's Ray; default all, or "
        f"${RAY_CPUS_VARIABLE}; ignored with --ray-address",
    )  # fmt: skip


def write_connection(flwr_home: Path, name: str, settings: dict[str, Any]) -> Path:
    """Add (or update) the connection ``name`` in ``$FLWR_HOME/config.toml``.

    Other connections in the file are kept; the first one written becomes the default.
    A legacy ``[tool.flwr.federations]`` table in pyproject.toml is not used: 1.41
    migrates it into this file on its own.
    """
    path = flwr_home / "config.toml"
    flwr_home.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    superlinks = config.setdefault("superlink", {})
    if superlinks.get(name) != settings:
        superlinks[name] = settings
        superlinks.setdefault("default", name)
        write_text_atomically(path, tomli_w.dumps(config))
    return path


def ensure_connection(flwr_home: Path, port: int) -> Path:
    """The launcher's plain-text connection ``fedseqrec-sim`` to its local SuperLink."""
    return write_connection(
        flwr_home, CONNECTION, {"address": f"127.0.0.1:{port}", "insecure": True}
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LocalSuperLink:
    """``flower-superlink --simulation`` on ``127.0.0.1:port`` for the ``with`` block."""

    def __init__(
        self,
        port: int,
        log_file: Path,
        env: dict[str, str],
        run_dir: Path | None = None,
        app_dir: Path | None = None,
    ) -> None:
        self.port = port
        self.log_file = log_file
        self.env = env
        self.run_dir = run_dir  # where the watchdog records that the launcher died
        self.app_dir = app_dir  # the app's temporary copy, which the watchdog removes then
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalSuperLink:
        if _healthy(self.port):
            raise SuperLinkError(
                f"port {self.port} already serves a SuperLink: another simulation is running "
                "(run one at a time, or pass --port)"
            )
        command = [
            str(Path(sys.executable).with_name("flower-superlink")),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--log-file", str(self.log_file),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            self.watchdog = start_watchdog(self.process.pid, self.env, self.run_dir, self.app_dir)
        except OSError as error:
            self._stop()
            raise SuperLinkError(f"could not start the SuperLink's watchdog: {error}") from None
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(self.port):
            if self.process.poll() is not None:
                raise SuperLinkError(
                    f"flower-superlink exited with code {self.process.returncode} "
                    f"(see {self.log_file})"
                )
            if time.monotonic() > deadline:
                self._stop()
                raise SuperLinkError(f"flower-superlink not ready after {STARTUP_SECONDS:.0f}s")
            time.sleep(0.2)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        """Stop the SuperLink, its process group and every descendant's group, then every
        other process of the launch (:data:`RUN_MARKER` in its environment: a part whose
        parent died is no descendant any more)."""
        marker = self.env.get(RUN_MARKER)
        if marker:  # every process at once: SIGTERM, SIGKILL what is left after 5 s
            spared = (self.watchdog.pid,) if self.watchdog is not None else ()
            stop_marked(marker, exclude=spared, timeout=5.0)
        if self.process is not None:
            stop_process_group(self.process)  # without a marker; and reaps the SuperLink
        if self.watchdog is not None:
            release_watchdog(self.watchdog)
