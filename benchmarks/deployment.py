"""Seconds per round of a 2-node TLS deployment: Flower's default ClientApp vs the warm one.

Both modes start the same local deployment (:class:`deploy.local.LocalDeployment`:
SuperLink with TLS and node authentication, two SuperNodes on 127.0.0.1), each node
holding half of the first 100 ML-100k users in its own ``u.data``, and run the same
federation (FedAvg, LSTM dim 16, every node every round). ``cold`` is Flower's default
(``--isolation subprocess``: a fresh ``flwr-clientapp`` process, imports included, per
message); ``warm`` is ``--isolation process`` with :mod:`deploy.warm_superexec`.
Round seconds come from the ServerApp's ``metrics.csv`` (send to last reply, server
evaluation excluded). Writes ``benchmarks/results/deployment.json``.

    python benchmarks/deployment.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data.catalogue import ItemCatalogue
from common.data.loaders import builtin_path
from deploy.local import run_local

RESULTS = ROOT / "benchmarks" / "results" / "deployment.json"
USERS = 100


def write_node_data(folder: Path) -> tuple[Path, list[Path]]:
    """The public item list of the first ``USERS`` ML-100k users' items (the server's only
    data) and two halves of those users' logs (nodes)."""
    rows = builtin_path("ml-100k").read_text().splitlines()
    users = sorted({int(row.split("\t")[0]) for row in rows})[:USERS]
    halves = (set(users[: USERS // 2]), set(users[USERS // 2 :]))
    paths = []
    for name, keep in (("server", set(users)), ("node-1", halves[0]), ("node-2", halves[1])):
        path = folder / name / "u.data"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(r for r in rows if int(r.split("\t")[0]) in keep) + "\n")
        paths.append(path)
    catalogue = folder / "server" / "catalogue.txt"
    ItemCatalogue.from_dataset(str(paths[0])).write(catalogue)
    paths[0].unlink()  # the server holds no user data
    return catalogue, paths[1:]


def measure(mode: str, server: Path, nodes: list[Path], rounds: int, work: Path) -> dict[str, Any]:
    """One deployment run; per-round seconds from its metrics.csv."""
    overrides = [f"catalogue={json.dumps(str(server))}", f"population={USERS}"]
    overrides += [f"num-server-rounds={rounds}"]
    overrides += ["model=lstm", "dim=16", "fraction-train=1.0", "local-epochs=1"]
    summary = run_local(nodes, "ml100k-fedavg", overrides, work / mode, warm=mode == "warm")
    (run_dir,) = (work / mode).iterdir()
    with (run_dir / "metrics.csv").open(newline="") as handle:
        seconds = [float(r["round_seconds"]) for r in csv.DictReader(handle) if r["round"] != "0"]
    return {
        "round_seconds": seconds,
        "mean_round_seconds": round(sum(seconds) / len(seconds), 2),
        "test_hr@10": summary["test"]["hr@10"],
        "node_errors": len(summary["node_errors"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both modes once and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("FLWR_HOME", str(work / "flwr-home"))
        server, nodes = write_node_data(work / "data")
        load_before = os.getloadavg()
        modes = {mode: measure(mode, server, nodes, args.rounds, work) for mode in ("cold", "warm")}
    result = {
        "setup": f"2 SuperNodes + SuperLink on 127.0.0.1, TLS + node auth, {USERS} ML-100k users, "
        f"LSTM dim 16, {args.rounds} rounds, every node every round",
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), shared; "
        f"load average at start {load_before[0]:.1f}",
        **modes,
        "speedup": round(
            modes["cold"]["mean_round_seconds"] / modes["warm"]["mean_round_seconds"], 2
        ),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
