"""Centralized benchmark: every model on ML-100k and Beauty, plus the trivial baselines.

Each (data set, model) pair trains in its own subprocess with the settings in
``benchmarks/configs/<dataset>-<model>.toml`` (usable as ``fedseqrec-train --config``),
so its peak RSS is its own. Writes ``benchmarks/results/centralized.json``. Besides the
three models, ``--models`` takes variants that have a config of their own, such as
``attention-tuned``, ``attention-prefix`` or ``attention-rotary`` for Beauty (the config
names the model). Sports and Toys run by name, with the variants they have configs for.

    python benchmarks/centralized.py [--datasets ml-100k beauty] [--models attention ...]
    python benchmarks/centralized.py --datasets sports toys --models attention-rotary
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data.loaders import load_dataset
from common.data.sequences import build_sequences, leave_one_out_split
from common.evaluation.scoring import UNEXCLUDED_SUFFIX, evaluate_baselines
from common.models import MODEL_NAMES
from common.storage.run_folder import write_json
from common.training.cli import load_settings, run

CONFIGS = ROOT / "benchmarks" / "configs"
RESULTS = ROOT / "benchmarks" / "results" / "centralized.json"
DATASETS = ("ml-100k", "beauty", "sports", "toys")
DEFAULT_DATASETS = ("ml-100k", "beauty")  # every model has a config for these
REPORTED = ("hr@10", "ndcg@10", "hr@10" + UNEXCLUDED_SUFFIX, "ndcg@10" + UNEXCLUDED_SUFFIX)


def variants() -> list[str]:
    """Every model or variant with a config for at least one data set."""
    names = {
        path.stem.removeprefix(f"{dataset}-")
        for path in CONFIGS.glob("*.toml")
        for dataset in DATASETS
        if path.stem.startswith(f"{dataset}-")
    }
    return sorted(names | set(MODEL_NAMES))


def train_one(dataset: str, model: str, out: Path) -> dict[str, Any]:
    """Train one configured pair in this process and summarise it."""
    config = CONFIGS / f"{dataset}-{model}.toml"
    if not config.exists():
        raise SystemExit(f"{config}: no such config ({model} has none for {dataset})")
    settings = {"dataset": dataset, "model": model.split("-")[0], "out": out}
    settings.update(load_settings(config))
    started = time.perf_counter()
    run_dir, result = run(settings)
    epochs = result.history
    return {
        "settings": {k: v for k, v in settings.items() if k != "out"},
        "test": {k: round(result.test[k], 4) for k in REPORTED},
        "valid_ndcg@10": round(result.valid["ndcg@10"], 4),
        "best_epoch": result.best_epoch,
        "epochs_run": len(epochs),
        "seconds_per_epoch": round(sum(r.seconds for r in epochs) / len(epochs), 2),
        "total_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fusion_weights": result.model.fusion_weights(),
        "long_horizon_hr@10": round(
            json.loads((run_dir / "test_metrics.json").read_text())["long_horizon_hr@10"], 4
        ),
    }


def baselines(dataset: str) -> dict[str, dict[str, float]]:
    """Popularity and Markov chain on the same test protocol."""
    split = leave_one_out_split(build_sequences(load_dataset(dataset)))
    return {
        name: {k: round(metrics[k], 4) for k in REPORTED}
        for name, metrics in evaluate_baselines(split, "test").items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=variants())
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.one:
            dataset, model = args.one
            print(json.dumps(train_one(dataset, model, Path(scratch))))
            return 0
        results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        for dataset in args.datasets:
            entry = results.setdefault(dataset, {})
            entry["baselines"] = baselines(dataset)
            print(f"{dataset} baselines: {json.dumps(entry['baselines'])}", flush=True)
            for model in args.models:
                child = subprocess.run(
                    [sys.executable, __file__, "--one", dataset, model],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if child.returncode != 0:
                    print(child.stderr[-2000:], file=sys.stderr)
                    return child.returncode
                entry[model] = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"{dataset} {model}: {json.dumps(entry[model])}", flush=True)
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                write_json(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
