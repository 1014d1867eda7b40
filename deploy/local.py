"""A whole deployment on 127.0.0.1: SuperLink + one SuperNode per click log, TLS and node auth.

``python -m deploy.local --data node1.csv --data node2.csv --preset PRESET [--set k=v ...]``

For trying the deployment out, for the end-to-end test and for the benchmark; a real
deployment runs the same Flower commands on separate machines (docs/deployment.md, "Edge
deployment"). In ``WORK_DIR`` (default: a new folder under ``results/``) it creates a CA,
the SuperLink certificate and one key pair per node (:mod:`deploy.certificates`),
starts ``flower-superlink`` with TLS and ``--enable-supernode-auth``, names it as
connection ``fedseqrec-edge`` in ``$FLWR_HOME/config.toml``, registers every node's
public key with ``flwr supernode register``, starts one ``flower-supernode`` per click
log (``--node-config data-path=...``, its private key, the CA; the same key signs the
node's receipts, node config ``receipt-key``) and, unless ``--cold``, a warm SuperExec per
node (:mod:`deploy.warm_superexec`). It submits one run (:func:`deploy.run.submit_run`),
whose server signs its ledger with the deployment's ``ledger-key``, and stops every
process it started, also on errors. If its owner dies without stopping them (SIGKILL
included), a watchdog (:mod:`simulations.watchdog`) stops every process that carries the
deployment's marker, as it does for a simulation whose launcher died.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from common.storage.run_folder import new_run_dir
from deploy.certificates import DeploymentCredentials, create_credentials
from deploy.run import deployment_config, submit_run
from simulations.launch import PROJECT_ROOT, LaunchError
from simulations.process_tree import kill_process_tree, stop_process_group
from simulations.superlink import flower_env, free_port, write_connection
from simulations.supervision import RUN_MARKER
from simulations.watchdog import release_watchdog, start_watchdog

logger = logging.getLogger("fedseqrec.deploy")

CONNECTION = "fedseqrec-edge"
STARTUP_SECONDS = 60.0


def write_tls_connection(flwr_home: Path, name: str, address: str, root_certificates: Path) -> None:
    """Add (or replace) a TLS connection in ``$FLWR_HOME/config.toml``, keeping the others."""
    write_connection(
        flwr_home, name, {"address": address, "root-certificates": str(root_certificates.resolve())}
    )


def _healthy(port: int, context: ssl.SSLContext) -> bool:
    url = f"https://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=0.5, context=context) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class LocalDeployment:
    """SuperLink and SuperNodes on 127.0.0.1 for the ``with`` block (TLS + node auth).

    Every process it starts inherits a fresh :data:`RUN_MARKER` in ``env``, and a watchdog
    holding a pipe from this process stops them all if this process dies first.
    """

    work_dir: Path
    node_data: list[Path]
    warm: bool = True
    env: dict[str, str] = field(default_factory=flower_env)
    port: int = 0
    credentials: DeploymentCredentials | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    database: Path | None = None  # the SuperLink's state file (Flower's --database)
    superlink: subprocess.Popen[bytes] | None = None
    watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        missing = [path for path in self.node_data if not path.is_file()]
        if missing:
            raise LaunchError(f"node data {missing[0]}: file not found")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        keys = create_credentials(self.work_dir / "keys", len(self.node_data))
        self.credentials = keys
        self.port = self.port or free_port()
        self.env = {**self.env, RUN_MARKER: uuid.uuid4().hex}
        self._start_superlink(keys)
        write_tls_connection(
            Path(self.env["FLWR_HOME"]), CONNECTION, f"127.0.0.1:{self.port}", keys.ca_certificate
        )
        self._register(list(keys.node_public_keys))
        for index, (data, private_key) in enumerate(
            zip(self.node_data, keys.node_private_keys, strict=True), start=1
        ):
            self._start_supernode(index, data.resolve(), private_key, keys.ca_certificate)

    def _spawn(
        self, command: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own session (so that its whole group can be stopped)."""
        with (self.work_dir / log_name).open("ab") as log_file:
            process = subprocess.Popen(
                command, env=env or self.env, cwd=PROJECT_ROOT, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def crash_superlink(self) -> list[int]:
        """SIGKILL the SuperLink and everything it started (the ServerApp): their pids."""
        if self.superlink is None:
            raise LaunchError("no SuperLink is running")
        killed = kill_process_tree(self.superlink.pid)
        self.superlink.wait()
        self.processes.remove(self.superlink)
        self.superlink = None
        return killed

    def restart_superlink(self) -> None:
        """Start the SuperLink again on the same port, keys and ``database``.

        With a database it keeps the registered node keys and the nodes reconnect on
        their own; without one it starts empty and the nodes are refused.
        """
        if self.credentials is None:
            raise LaunchError("the deployment was never started")
        self._start_superlink(self.credentials)

    def _start_superlink(self, keys: DeploymentCredentials) -> None:
        database = ["--database", str(self.database)] if self.database else []
        process = self._spawn(
            [
                str(Path(sys.executable).with_name("flower-superlink")),
                "--ssl-ca-certfile",
                str(keys.ca_certificate),
                "--ssl-certfile",
                str(keys.server_certificate),
                "--ssl-keyfile",
                str(keys.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *database,
            ],  # fmt: skip
            "superlink.log",
        )
        self.superlink = process
        if self.watchdog is None:  # before the wait: an owner may die while it lasts
            self.watchdog = start_watchdog(process.pid, self.env)
        context = ssl.create_default_context(cafile=str(keys.ca_certificate))
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(self.port, context):
            if process.poll() is not None:
                raise LaunchError(
                    f"flower-superlink exited with code {process.returncode} "
                    f"(see {self.work_dir / 'superlink.log'})"
                )
            if time.monotonic() > deadline:
                raise LaunchError(f"flower-superlink not ready after {STARTUP_SECONDS:.0f}s")
            time.sleep(0.2)

    def _register(self, public_keys: list[Path]) -> None:
        """``flwr supernode register`` every key (in parallel): only these may connect."""
        flwr = str(Path(sys.executable).with_name("flwr"))
        commands = [
            [flwr, "supernode", "register", str(key), CONNECTION, "--format", "json"]
            for key in public_keys
        ]
        running = [
            subprocess.Popen(
                command,
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for command in commands
        ]
        for key, process in zip(public_keys, running, strict=True):
            output, _ = process.communicate(timeout=120)
            if process.returncode != 0 or '"success": true' not in output:
                raise LaunchError(f"registering {key.name} failed: {output.strip()}")

    def _start_supernode(self, index: int, data: Path, private_key: Path, ca: Path) -> None:
        runtime_port = free_port()
        node_config = f'data-path="{data}" receipt-key="{private_key.resolve()}"'
        command = [
            str(Path(sys.executable).with_name("flower-supernode")),
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(ca),
            "--auth-supernode-private-key", str(private_key),
            "--node-config", node_config,
            "--host", "127.0.0.1",
            "--port", str(runtime_port),
        ]  # fmt: skip
        if self.warm:
            command += ["--isolation", "process"]
        # Each node installs the app into its own FLWR_HOME, as on separate machines.
        env = {**self.env, "FLWR_HOME": str(self.work_dir / f"node-{index}-flwr-home")}
        supernode = self._spawn(command, f"node-{index}.log", env)
        if self.warm:
            self._spawn(
                [
                    sys.executable,
                    "-m",
                    "deploy.warm_superexec",
                    "--runtime-api-address",
                    f"127.0.0.1:{runtime_port}",
                    "--insecure",
                    "--parent-pid",
                    str(supernode.pid),
                ],  # fmt: skip
                f"node-{index}.log",
                env,
            )

    def stop(self) -> None:
        """Stop every process this deployment started, all at once, and wait for them."""
        stoppers = [
            threading.Thread(target=stop_process_group, args=(process,))
            for process in self.processes
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        self.processes.clear()
        if self.watchdog is not None:
            release_watchdog(self.watchdog)
            self.watchdog = None


def run_local(
    node_data: list[Path], preset: str, overrides: list[str], results: Path, warm: bool
) -> dict[str, Any]:
    """Start the local deployment, run one federation on it, stop it; returns the summary."""
    label, config = deployment_config(preset, overrides, len(node_data))
    results_dir = new_run_dir(results.resolve(), label)
    with LocalDeployment(results_dir / "deployment", node_data, warm=warm) as deployment:
        logger.info(
            "SuperLink https://127.0.0.1:%d (TLS, node auth), %d SuperNodes (%s ClientApps)",
            deployment.port,
            len(node_data),
            "warm" if warm else "cold",
        )
        keys = deployment.credentials
        signed = {**config, "ledger-key": str(keys.ledger_key.resolve())} if keys else config
        return submit_run(CONNECTION, signed, results_dir, deployment.env)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__)
    parser.add_argument(
        "--data", action="append", type=Path, required=True,
        help="one SuperNode's click log (repeat per node)",
    )  # fmt: skip
    parser.add_argument("--preset", required=True, help="name in simulations/presets or a path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="Flower's default: a fresh ClientApp process per message",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``error:`` line and a non-zero exit on failure."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    args = build_parser().parse_args(argv)
    try:
        summary = run_local(args.data, args.preset, args.set, args.results, not args.cold)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"status": summary["status"],
                      "mean_round_seconds": round(summary["mean_round_seconds"], 2),
                      "node_errors": len(summary["node_errors"])}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
