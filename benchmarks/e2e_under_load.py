"""The end-to-end tests, run several times in a row while a second test process loads both cores.

``python benchmarks/e2e_under_load.py [--runs 5] [--workers 3] [--results JSON] [TESTS ...]``
starts the unit suite in a loop (``pytest -n 2 tests/unit``, a second test process on both
cores), then runs the end-to-end tests (``pytest -n WORKERS --dist worksteal TESTS``, default
every test in ``tests/e2e``) ``--runs`` times in a row, each in a fresh temporary folder.
A race that needs busy cores to show shows here. Writes ``--results`` (default
``benchmarks/results/e2e_under_load.json``): each run's exit status, pytest's summary
line, seconds, the failed tests and the load average, and how many unit-suite runs
completed meanwhile (the load was real).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
PROJECT = ROOT.parent
RESULTS = ROOT / "results" / "e2e_under_load.json"
LOAD = (  # the second test process: the unit suite on both cores, again and again
    "while true; do {python} -m pytest -p no:cacheprovider -n 2 tests/unit"
    " --basetemp={tmp}/load > {tmp}/load.log 2>&1; echo run >> {tmp}/load.runs; done"
)


def failures(output: str, limit: int = 6000) -> str:
    """pytest's FAILURES section (tracebacks and assertion messages), cut to ``limit``."""
    start = output.find("= FAILURES =")
    if start < 0:
        return ""
    end = output.find("= warnings summary =", start)
    return output[start : end if end > 0 else None][:limit]


def run_e2e(tests: list[str], workers: int, tmp: Path, index: int) -> dict[str, Any]:
    """One pytest run of ``tests``: its outcome, seconds and failures."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(workers),
         "--dist", "worksteal", "--basetemp", str(tmp / f"e2e-{index}"), *tests],
        cwd=PROJECT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    outcome = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", result.stdout, re.MULTILINE)
    return {
        "exit_status": result.returncode,
        "summary": outcome[-1] if outcome else result.stdout[-500:],
        "seconds": round(time.monotonic() - started, 1),
        "failed": re.findall(r"^FAILED (\S+)", result.stdout, flags=re.MULTILINE),
        "failures": failures(result.stdout),
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Load both cores, run the end-to-end tests ``--runs`` times, write the results."""
    parser = argparse.ArgumentParser(prog="python benchmarks/e2e_under_load.py",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON to write")
    parser.add_argument("tests", nargs="*", default=["tests/e2e"])
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="e2e-under-load-") as folder:
        tmp = Path(folder)
        load = subprocess.Popen(  # its own group: the loop and its pytest stop together
            ["bash", "-c", LOAD.format(python=sys.executable, tmp=tmp)],
            cwd=PROJECT, start_new_session=True,
        )  # fmt: skip
        try:
            for index in range(args.runs):
                runs.append(run_e2e(args.tests, args.workers, tmp, index))
                print(f"run {index + 1}/{args.runs}: {runs[-1]}", flush=True)
        finally:
            os.killpg(load.pid, signal.SIGKILL)
            load.wait()
        load_runs = (
            (tmp / "load.runs").read_text().count("run") if (tmp / "load.runs").exists() else 0
        )
    report = {
        "tests": args.tests,
        "workers": args.workers,
        "load": "pytest -n 2 tests/unit, in a loop",
        "unit_suite_runs_completed_meanwhile": load_runs,
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
        "all_passed": all(run["exit_status"] == 0 for run in runs),
    }
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{sum(r['exit_status'] == 0 for r in runs)}/{len(runs)} runs passed -> {args.results}")
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
