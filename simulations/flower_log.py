"""Run ``flwr run --stream``: every line to the run's log file, the useful ones to the console.

Flower's INFO chatter (strategy banners, sampling, metric dumps: about two thirds of a
run's lines) goes to the log file only; the console shows our own progress lines and
everything else Flower prints (warnings, errors, tracebacks).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

# Flower's log records: "INFO :      ..." (colour codes when it writes to a terminal)
FLOWER_INFO = re.compile(r"^(\x1b\[[0-9;]*m)?(INFO|DEBUG)\s*(\x1b\[[0-9;]*m)?\s*:")
FLWR_CLI_CHATTER = ("Successfully installed ", "Using SuperLink: ", "Successfully started run ")


def shown_on_console(line: str) -> bool:
    """Whether a line of ``flwr run --stream`` belongs on the console."""
    return not FLOWER_INFO.match(line) and not line.startswith(FLWR_CLI_CHATTER)


def stream_flwr_run(
    command: list[str], env: dict[str, str], cwd: Path, log_path: Path, timeout: float | None = None
) -> int:
    """Run ``command``, copy its output to ``log_path`` and the console; its exit code.

    With ``timeout`` (seconds) the command is killed when it runs longer; the exit code
    is then ``-SIGKILL``.
    """
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
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
