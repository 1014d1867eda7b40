"""A SuperExec for edge nodes that pays the ML imports once instead of once per message.

``python -m deploy.warm_superexec --runtime-api-address 127.0.0.1:9094 --insecure``

flwr 1.41 runs every message a SuperNode receives in a fresh ``flwr-clientapp``
process (``--isolation subprocess``, the default, and ``--isolation process`` alike:
the ClientApp is ephemeral, flwrlabs/flower#3670), so each round pays the imports of
torch, Opacus and pandas again (5 s on an idle core, about 20 s on a busy 2-core
machine). Flower's warm executor pools exist only for other task types on Kubernetes.

This process replaces ``flower-superexec`` next to a SuperNode started with
``--isolation process``: it imports the heavy libraries once, then polls the
SuperNode's Runtime API like ``flower-superexec`` does and, for every ClientApp task,
forks a child that runs Flower's own ``run_clientapp`` with the task's token. The
child starts with the libraries already in memory (copy-on-write), still loads the
app from the FAB the SuperLink sent, and exits after its message, so no state leaks
between messages and a crash loses one reply only.

It deliberately imports no app code (``client``, ``common``): a module already in
``sys.modules`` would shadow the FAB's copy in the child, so the child would not run the
app version the SuperLink sent. That is why this module lives in ``deploy/``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.supernode.runtime.run_clientapp import run_clientapp

logger = logging.getLogger("fedseqrec.warm_superexec")

PRELOADED_MODULES = ("numpy", "pandas", "scipy", "torch", "opacus")
POLL_SECONDS = 1.0  # flower-superexec's default task poll interval


def preload(modules: tuple[str, ...]) -> float:
    """Import the heavy libraries once; returns the seconds it took."""
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - started


class ForkingExecutor:
    """Flower's SuperExec ``Executor`` protocol: a forked child per ClientApp task."""

    def __init__(self, root_certificates: bytes | None) -> None:
        self.root_certificates = root_certificates
        self.children: set[int] = set()

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Only ClientApp tasks, without a capacity limit (like the subprocess executor)."""
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Forks have no capacity gate."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork; the child runs Flower's ``run_clientapp`` for the task and exits."""
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"only ClientApp tasks are handled, got {spec.task_type}")
        pid = os.fork()
        if pid == 0:  # child: never return into the parent's loop
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                run_clientapp(
                    runtime_api_address=spec.runtime_api_address,
                    token=spec.token,
                    insecure=spec.insecure,
                    certificates=self.root_certificates,
                    parent_pid=spec.parent_pid,
                    runtime_dependency_install=False,
                )
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap children that have exited."""
        for pid in list(self.children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        """Stop children still running (the SuperNode re-queues nothing; they just end)."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def serve(
    runtime_api_address: str,
    root_certificates_path: str | None,
    insecure: bool,
    parent_pid: int | None = None,
) -> None:
    """Poll the SuperNode's Runtime API for ClientApp tasks until SIGTERM/SIGINT."""
    certificates = (
        Path(root_certificates_path).expanduser().read_bytes() if root_certificates_path else None
    )
    executor = ForkingExecutor(certificates)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates_path,
        runtime_dependency_install=False,
        executor=executor,
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            executor.reconcile()
            if parent_pid is not None and not _alive(parent_pid):
                logger.info("parent process %d is gone; stopping", parent_pid)
                break
            task_types, fab_hashes = executor.get_eligible_capacity({TaskType.CLIENT_APP})
            response = client.AcquireTask(
                AcquireTaskRequest(
                    supported_task_types=sorted(task_types), agentapp_fab_hashes=fab_hashes
                )
            )
            if response.HasField("task") and response.token:
                result = plugin.launch_task(token=response.token, task=response.task)
                if result.message:
                    logger.error("task %d: %s", response.task.task_id, result.message)
            time.sleep(POLL_SECONDS)
    except _Stopped:
        logger.info("stopped")
    finally:
        executor.close()
        client.close()


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived: leave the poll loop at once, even from inside Flower's
    HTTP retries (which catch ``Exception``; like KeyboardInterrupt, this is not one)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (the subset of ``flower-superexec``'s that apply)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.warm_superexec",
        description="SuperExec that forks pre-imported ClientApp processes.",
    )
    parser.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's Runtime API host:port"
    )
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="Runtime API without TLS")
    tls.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    parser.add_argument("--parent-pid", type=int, help="stop when this process exits")
    parser.add_argument(
        "--preload",
        default=",".join(PRELOADED_MODULES),
        help=f"comma-separated modules to import once (default {','.join(PRELOADED_MODULES)})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: preload, then serve until stopped; bad flags exit 2."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # importing Opacus adds a root handler: print lines once
    args = build_parser().parse_args(argv)
    modules = tuple(name.strip() for name in args.preload.split(",") if name.strip())
    try:
        seconds = preload(modules)
    except ImportError as error:
        print(f"error: --preload: {error}", file=sys.stderr)
        return 2
    if args.root_certificates and not Path(args.root_certificates).is_file():
        print(
            f"error: --root-certificates {args.root_certificates}: file not found", file=sys.stderr
        )
        return 2
    logger.info("preloaded %s in %.1fs; serving %s", ", ".join(modules), seconds,
                args.runtime_api_address)  # fmt: skip
    serve(args.runtime_api_address, args.root_certificates, args.insecure, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
