"""``python -m simulations.launch --resume RUN_DIR``: carry on a killed simulation.

The run's config comes from the folder's ``config.json``, unchanged but for
``resume-from = RUN_DIR``; the ServerApp reads the state saved after the last complete
round (:mod:`server.resumption`) and the launcher starts a new local SuperLink and Flower
run that continue in the same folder, under the same run id. Everything is checked
before anything starts: the folder, its config, its saved state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.run_state import ResumeError, load_server_state

CONFIG = "config.json"
SUMMARY = "summary.json"
LOGS = ("flwr.log", "superlink.log")  # the launcher writes them afresh for each launch


def resumed_run(run_dir: Path) -> tuple[Path, str, dict[str, Any]]:
    """The run folder, preset label and run config (``resume-from`` set) to launch again."""
    folder = Path(run_dir).expanduser().resolve()
    settings_path = folder / CONFIG
    if not settings_path.is_file():
        raise ResumeError(f"{settings_path}: not found; --resume takes a run folder")
    try:
        settings = json.loads(settings_path.read_text())
        label, config = str(settings["preset"]), dict(settings["run_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ResumeError(f"{settings_path}: not a launcher's config ({error})") from None
    summary = folder / SUMMARY
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        raise ResumeError(f"{summary}: this run completed; there is nothing to resume")
    load_server_state(folder)  # readable, and names files that are there
    if Path(str(config.get("results-dir", folder))) != folder:
        raise ResumeError(
            f"{settings_path}: results-dir {config.get('results-dir')!r} is not this folder "
            f"(was it moved? resume it where it ran)"
        )
    return folder, label, {**config, "resume-from": str(folder), "results-dir": str(folder)}


def keep_earlier_logs(folder: Path) -> None:
    """Rename the killed launch's logs (``flwr.log`` -> ``flwr.1.log``, ...) before a new one."""
    for name in LOGS:
        path = folder / name
        if path.is_file():
            number = 1
            while (target := path.with_name(f"{path.stem}.{number}{path.suffix}")).exists():
                number += 1
            path.rename(target)
