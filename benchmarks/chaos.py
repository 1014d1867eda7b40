"""Chaos benchmark: kill -9 a random part of a user-level DP run at a random round, resume.

``python benchmarks/chaos.py [--cycles 20] [--rounds 4] [--seed 0]`` runs the
``ml100k-dp`` preset made small (dim 8, ``--rounds`` rounds, validated after the last
only, the same target epsilon) once uninterrupted, then ``--cycles`` times: launch it, wait for a
random round, SIGKILL one random part of it (the SuperLink, the ServerApp's
``flwr-simulation``, a Ray client worker, or the launcher) and nothing else, check that
no process of the run outlives the kill by more than a few seconds, then ``--resume``
until it completes. While each resume runs, a second ``--resume`` of the same folder is
started and must be refused (one writer per run folder). Every final folder must pass
``fedseqrec-audit``, hold every round once in ``metrics.csv`` (rounds released but not
saved, counted in the ledger, excepted) and in the ledger, and end at the uninterrupted
run's epsilon. Writes ``benchmarks/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common.privacy.ledger import read_ledger
from simulations.launch import PROJECT_ROOT
from simulations.superlink import flower_env, free_port
from simulations.supervision import marked_processes

RESULTS = ROOT / "results" / "chaos.json"
RUNS = ROOT / "runs" / "chaos"
MARKER = "FEDSEQREC_CHAOS"
PARTS = {  # part -> what its command line holds
    "SuperLink": "flower-superlink",
    "ServerApp": "flwr-simulation",
    "Ray worker": "ray::ClientAppActor",
    "launcher": "simulations.launch",
}
SMALL = {"dim": 8, "layers": 1, "max-len": 20}  # eval-every: --rounds (the last round only)
WAIT_SECONDS = 600.0
GONE_SECONDS = 30.0


def marked(marker: str) -> dict[int, str]:
    """Live processes of one launch (the benchmark marks each launcher's environment)."""
    return marked_processes(marker, variable=MARKER)


def launcher(args: list[str], log: Path, marker: str) -> subprocess.Popen[bytes]:
    """``python -m simulations.launch ARGS`` in a session of its own, marked."""
    env = {**flower_env(), MARKER: marker}
    command = [sys.executable, "-m", "simulations.launch", *args, "--port", str(free_port())]
    with log.open("ab") as output:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def saved_round(results: Path) -> int:
    """The round of the run's last saved state (-1 before round 0 was saved)."""
    states = list(results.glob("*/state/server_state.json"))
    try:
        return int(json.loads(states[0].read_text())["round"]) if states else -1
    except (OSError, ValueError, KeyError):
        return -1


def kill_part(part: str, marker: str) -> int:
    """SIGKILL one process of ``part`` of the launch marked ``marker`` (waiting for one to
    exist: Ray starts its workers with the first round); its pid."""
    deadline = time.monotonic() + 120
    while not (
        pids := [
            pid
            for pid, line in marked(marker).items()
            if PARTS[part] in line and (part == "launcher" or "python -m simulations" not in line)
        ]
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {part} process found")
        time.sleep(0.1)  # fmt: skip
    target = random.choice(sorted(pids))
    os.kill(target, signal.SIGKILL)
    return target


def run_cycle(index: int, rounds: int, preset: Path, expected_epsilon: float) -> dict[str, Any]:
    """One kill and the resumes after it; the checks of its final folder."""
    results, log = RUNS / f"cycle-{index:02d}", RUNS / f"cycle-{index:02d}.log"
    part, kill_after = random.choice(list(PARTS)), random.randint(0, rounds - 2)
    marker = uuid.uuid4().hex
    process = launcher(["--preset", str(preset), "--results", str(results)], log, marker)
    deadline = time.monotonic() + WAIT_SECONDS
    while saved_round(results) < kill_after and process.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"cycle {index}: round {kill_after} never saved")
        time.sleep(0.1)
    target = kill_part(part, marker)
    killed_at = time.monotonic()
    process.wait(timeout=WAIT_SECONDS)
    while marked(marker) and time.monotonic() < killed_at + 120:
        time.sleep(0.1)
    survivors = marked(marker)
    gone_after = time.monotonic() - killed_at
    (folder,) = results.iterdir()
    resumes, refused = resume_until_done(folder, log)
    return {"cycle": index, "part": part, "pid": target, "kill_after_round": kill_after,
            "launcher_exit": process.returncode, "gone_after_seconds": round(gone_after, 2),
            "survivors": sorted(survivors.values()), "resumes": resumes,
            "second_writer_refused": refused,
            **folder_checks(folder, rounds, expected_epsilon)}  # fmt: skip


def resume_until_done(folder: Path, log: Path) -> tuple[int, bool]:
    """``--resume`` twice at once until the run completes: exactly one of each pair may
    write the folder, the other must be refused (exit 2, naming the writer)."""
    resumes, refused = 0, True
    while not completed(folder):
        resumes += 1
        if resumes > 3:
            raise RuntimeError(f"{folder}: not completed after 3 resumes (see {log})")
        pair = [launcher(["--resume", str(folder)], log, uuid.uuid4().hex) for _ in range(2)]
        codes = sorted(process.wait(timeout=WAIT_SECONDS) for process in pair)
        refused &= codes[1] == 2 and codes[0] != 2
    text = log.read_text(errors="replace")
    refused &= "one writer per run folder" in text
    return resumes, refused


def completed(folder: Path) -> bool:
    """Whether the folder's summary says completed."""
    path = folder / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"


def folder_checks(folder: Path, rounds: int, expected_epsilon: float) -> dict[str, Any]:
    """Audit, metrics rounds, ledger rounds and the final epsilon of a finished folder."""
    summary = json.loads((folder / "summary.json").read_text())
    audit = json.loads((folder / "audit.json").read_text())
    with (folder / "metrics.csv").open() as handle:
        metric_rounds = [int(line.split(",")[0]) for line in handle.read().splitlines()[1:]]
    ledger = read_ledger(folder / "ledger" / "server.jsonl")
    lost = {r for resume in summary.get("resumed", [])
            for r in range(resume["from_round"] + 1, resume["continued_after"] + 1)}  # fmt: skip
    epsilon = ledger[-1].epsilon
    return {
        "audit_passed": bool(audit["passed"]),
        "metrics_rounds_once": sorted(set(metric_rounds) | lost) == list(range(rounds + 1))
        and len(metric_rounds) == len(set(metric_rounds))
        and not (lost & set(metric_rounds)),
        "ledger_rounds_once": [e.round for e in ledger] == list(range(1, rounds + 1)),
        "epsilon": epsilon,
        "epsilon_equal": abs(epsilon - expected_epsilon) < 1e-9,
        "rounds_lost": len(lost),
        "stopped_by": [resume["stopped_by"]["part"] for resume in summary.get("resumed", [])],
    }


def main() -> int:
    """Run the cycles and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)  # which part and when: the kill schedule, not the privacy noise
    RUNS.mkdir(parents=True, exist_ok=True)
    preset = RUNS / "chaos.toml"
    base = (PROJECT_ROOT / "simulations" / "presets" / "ml100k-dp.toml").read_text()
    extra = {**SMALL, "num-server-rounds": args.rounds, "eval-every": args.rounds}
    kept = [line for line in base.splitlines() if line.split(" = ")[0] not in extra]
    preset.write_text("\n".join(kept + [f"{k} = {json.dumps(v)}" for k, v in extra.items()]))
    whole = RUNS / "uninterrupted"
    code = launcher(["--preset", str(preset), "--results", str(whole)], RUNS / "whole.log",
                    uuid.uuid4().hex).wait()  # fmt: skip
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed (see {RUNS / 'whole.log'})")
    (whole_folder,) = whole.iterdir()
    expected = read_ledger(whole_folder / "ledger" / "server.jsonl")[-1].epsilon
    cycles = []
    for index in range(args.cycles):
        cycles.append(run_cycle(index, args.rounds, preset, expected))
        print(json.dumps(cycles[-1]), flush=True)
    checks = ("audit_passed", "metrics_rounds_once", "ledger_rounds_once", "epsilon_equal",
              "second_writer_refused")  # fmt: skip
    result = {
        "command": f"python benchmarks/chaos.py --cycles {args.cycles} --rounds {args.rounds} "
        f"--seed {args.seed}",
        "uninterrupted_epsilon": expected,
        "cycles": cycles,
        "all_passed": all(c[k] for c in cycles for k in checks)
        and all(not c["survivors"] and c["gone_after_seconds"] < GONE_SECONDS for c in cycles),
        "max_gone_after_seconds": max(c["gone_after_seconds"] for c in cycles),
        "parts_killed": {p: sum(c["part"] == p for c in cycles) for p in PARTS},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}, indent=2))
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
