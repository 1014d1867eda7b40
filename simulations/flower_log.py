"""Run ``flwr run --stream``: every line to the run's log file, our own to the console.

The console shows the apps' own progress lines (``INFO fedseqrec.server: ...``) and
nothing else: Flower's chatter (strategy banners, sampling, metric dumps), its error
boxes and tracebacks, Ray's worker dumps and per-node details (the ``*.detail`` loggers)
go to the run's log file only. When a run fails the launcher prints one line saying
what failed and what to do, and names that file for the details.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# our apps' log records (common/federation/app_logging.py): "LEVEL fedseqrec.NAME: ..."
OWN_LINE = re.compile(r"^(INFO|WARNING|ERROR|CRITICAL) (?P<logger>fedseqrec\.[\w.]+): ")
DETAIL = ".detail"  # fedseqrec.*.detail loggers: per-node details, for the log file only


def shown_on_console(line: str) -> bool:
    """Whether a line of ``flwr run --stream`` belongs on the console."""
    match = OWN_LINE.match(line)
    return match is not None and not match.group("logger").endswith(DETAIL)


def stream_flwr_run(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
) -> int:
    """Run ``command``, copy its output to ``log_path`` and the console; its exit code.

    With ``timeout`` (seconds) the command is killed when it runs longer; the exit code
    is then ``-SIGKILL``. ``on_start`` gets the process once it runs (a supervisor).
    """
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        if on_start is not None:
            on_start(process)
        timer = threading.Timer(timeout, process.kill) if timeout else None
        if timer:
            timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if shown_on_console(line):
                    sys.stdout.write(line)
            return process.wait()
        finally:
            if timer:
                timer.cancel()


KILLED = -signal.SIGKILL
