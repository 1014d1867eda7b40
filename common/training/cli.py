"""``fedseqrec-train``: centralized training of one model on one data set, into a run folder.

Settings come from a TOML file (``--config``), overridden by command-line flags. The run
folder gets config.json, metrics.csv (one row per epoch), test_metrics.json,
checkpoint.pt and valid_ndcg.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.config.field_types import coerce_value
from common.data.attributes import ItemAttributes, check_attribute_source, load_item_attributes
from common.data.loaders import (
    BUILTIN_DATASETS,
    DataFormatError,
    dataset_log_format,
    load_dataset,
)
from common.data.sequences import (
    LeaveOneOutSplit,
    SequenceDataset,
    build_sequences,
    leave_one_out_split,
)
from common.evaluation.scoring import UNEXCLUDED_SUFFIX, evaluate_long_horizon
from common.models import MODEL_KEYS, MODEL_NAMES, ModelConfig
from common.storage.run_folder import MetricsCSV, new_run_dir, plot_series, write_json
from common.training.centralized import EpochRecord, TrainConfig, TrainResult, train_centralized

logger = logging.getLogger("fedseqrec.train")

TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
RUN_KEYS = {  # the keys beside the model's and the training's, with their types
    "dataset": str,
    "model": str,
    "out": str,
    "threads": int,
    "text_init": bool,
    "columns": str,
    "time_unit": str,
    "item_attributes": str,
}
REPORTED = ("hr@10", "ndcg@10", "mrr", "hr@10" + UNEXCLUDED_SUFFIX, "ndcg@10" + UNEXCLUDED_SUFFIX)


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror the TOML keys (dashes here, underscores or dashes in the file)."""
    parser = argparse.ArgumentParser(prog="fedseqrec-train", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file with any of the keys below")
    parser.add_argument(
        "--dataset", help=f"{', '.join(BUILTIN_DATASETS)}, or a path to a click log"
    )
    parser.add_argument(
        "--columns",
        help="column names of a CSV / Parquet log, e.g. "
        "user=customer_id,item=product_sku,timestamp=event_time",
    )
    parser.add_argument(
        "--time-unit", help="unit of numeric timestamps: s, ms, us, ns (default: detected)"
    )
    parser.add_argument(
        "--item-attributes",
        help="item attributes: 'builtin' (beauty, sports, toys) or a .json / .csv path",
    )
    parser.add_argument("--model", choices=MODEL_NAMES)
    parser.add_argument("--out", type=Path, help="folder for run folders (default runs/)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument(
        "--text-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="initialise item embeddings from pretrained title embeddings (ML-100k)",
    )
    fields = [*dataclasses.fields(ModelConfig), *dataclasses.fields(TrainConfig)]
    for field in sorted(fields, key=lambda f: f.name):
        if field.name not in {*MODEL_KEYS, *TRAIN_KEYS}:
            continue
        flag = "--" + field.name.replace("_", "-")
        if str(field.type) == "bool":  # --item-skip / --no-item-skip
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type={"float": float, "int": int}.get(str(field.type), str))
    return parser


def load_settings(path: Path | None) -> dict[str, Any]:
    """Read a TOML config; unknown keys are an error naming the file and the key."""
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read the config file ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise DataFormatError(f"{path}: invalid TOML ({error})") from None
    settings = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = set(settings) - set(MODEL_KEYS) - TRAIN_KEYS - set(RUN_KEYS)
    if unknown:
        raise DataFormatError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key, kind in RUN_KEYS.items():
        if key in settings:
            try:
                coerce_value(key, settings[key], kind)
            except ValueError as error:
                raise DataFormatError(f"{path}: {error}") from None
    return settings


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < config file < command-line flags."""
    settings: dict[str, Any] = {"dataset": "ml-100k", "model": ModelConfig().name, "out": "runs"}
    settings.update(load_settings(args.config))
    for key, value in vars(args).items():
        if key != "config" and value is not None:
            settings[key] = value
    return settings


def configs_from(settings: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Typed, validated configs; a bad value raises ValueError naming it."""
    if settings.get("threads") is not None and settings["threads"] < 1:
        raise ValueError(f"threads must be >= 1, got {settings['threads']}")
    model = ModelConfig(
        name=settings["model"], **{k: v for k, v in settings.items() if k in MODEL_KEYS}
    )
    train = TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_KEYS})
    if model.item_embedding != "free":
        if not str(settings.get("item_attributes", "")).strip():
            raise ValueError(
                f"item-embedding {model.item_embedding!r} needs --item-attributes: 'builtin' "
                "(beauty, sports, toys) or a path to the public attribute file"
            )
        if settings.get("text_init"):
            raise ValueError(f"text-init needs item-embedding 'free', got {model.item_embedding!r}")
    return model, train


def load_data(settings: dict[str, Any]) -> tuple[SequenceDataset, ItemAttributes | None]:
    """The data set's sequences and, if asked for, its item attributes (all checked first)."""
    name = str(settings["dataset"])
    log_format = dataset_log_format(
        name, str(settings.get("columns", "")), str(settings.get("time_unit", ""))
    )
    source = str(settings.get("item_attributes", ""))
    check_attribute_source(source, name)
    dataset = build_sequences(load_dataset(name, log_format), name)
    attributes = load_item_attributes(source, dataset.item_ids, name)
    if attributes is not None:
        logger.info(
            "%s: %d attributes over %d items", attributes.source, attributes.n_attributes,
            attributes.n_items,
        )  # fmt: skip
    return dataset, attributes


def check_out_folder(root: Path) -> None:
    """``--out`` is, or can become, a folder of run folders: refused before any training."""
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is None:  # not even the working folder: make_run_dir reports it
        return
    if not existing.is_dir():
        where = "is a file" if existing == root else f"lies under the file {existing}"
        raise ValueError(f"--out {root}: {where}, not a folder for run folders")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {root}: cannot create a run folder there ({existing} is "
                         "not writable)")  # fmt: skip


def make_run_dir(root: Path, label: str) -> Path:
    """A new run folder under ``--out``; a ValueError naming --out when it cannot be made."""
    try:
        return new_run_dir(root, label)
    except OSError as error:
        raise ValueError(
            f"--out {root}: cannot create a run folder there ({error.strerror})"
        ) from None


def run(settings: dict[str, Any]) -> tuple[Path, TrainResult]:
    """Train as configured and write the run folder."""
    model_config, train_config = configs_from(settings)
    train_config.torch_device()  # no CUDA: fail before anything is written
    check_out_folder(Path(settings["out"]))
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    dataset, attributes = load_data(settings)
    split = leave_one_out_split(dataset)
    label = f"{Path(str(settings['dataset'])).stem}-{model_config.name}"
    run_dir = make_run_dir(Path(settings["out"]), label)
    write_json(
        run_dir / "config.json",
        {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
    )
    columns = ["epoch", "train_loss", "seconds", "lr", *(f"valid_{k}" for k in REPORTED)]
    on_epoch = epoch_logger(MetricsCSV(run_dir / "metrics.csv", columns))
    model = None
    if settings.get("text_init"):
        from common.models.item_text_init import text_initialised_model

        model = text_initialised_model(model_config, dataset)

    def progress(epoch: int, total: int) -> Any:
        bar = tqdm(total=total, desc=f"epoch {epoch}", unit="seq", leave=False)
        return bar.update

    padded = attributes.padded() if attributes is not None else None
    result = train_centralized(
        split, model_config, train_config, on_epoch, progress, model, attributes=padded
    )
    write_results(run_dir, label, model_config, split, result)
    return run_dir, result


def epoch_logger(metrics: MetricsCSV) -> Callable[[EpochRecord], None]:
    """A callback that appends each epoch to metrics.csv and prints one line."""

    def on_epoch(record: EpochRecord) -> None:
        row: dict[str, Any] = {
            "epoch": record.epoch,
            "train_loss": round(record.train_loss, 5),
            "seconds": round(record.seconds, 2),
            "lr": record.lr,
        }
        row.update({f"valid_{k}": round(record.valid[k], 5) for k in REPORTED if record.valid})
        metrics.append(row)
        shown = f" valid ndcg@10 {record.valid['ndcg@10']:.4f}" if record.valid else ""
        tqdm.write(f"epoch {record.epoch}: loss {record.train_loss:.4f}{shown}")

    return on_epoch


def write_results(
    run_dir: Path,
    label: str,
    model_config: ModelConfig,
    split: LeaveOneOutSplit,
    result: TrainResult,
) -> None:
    """checkpoint.pt, test_metrics.json and valid_ndcg.png of a finished run."""
    state = {key: value.cpu() for key, value in result.model.state_dict().items()}
    torch.save(
        {"model_config": dataclasses.asdict(model_config), "state_dict": state},
        run_dir / "checkpoint.pt",
    )
    write_json(
        run_dir / "test_metrics.json",
        {
            "best_epoch": result.best_epoch,
            "test": result.test,
            "valid": result.valid,
            "fusion_weights": result.model.fusion_weights(),
            "long_horizon_hr@10": evaluate_long_horizon(
                result.model, split, model_config.max_len, 10, model_config.n_gap_buckets
            ),
            "seconds_per_epoch": sum(r.seconds for r in result.history) / len(result.history),
        },
    )
    evaluated = [r for r in result.history if r.valid]
    plot_series(
        run_dir / "valid_ndcg.png",
        [r.epoch for r in evaluated],
        {"validation NDCG@10": [r.valid["ndcg@10"] for r in evaluated]},
        "epoch",
        f"{label}: validation NDCG@10",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes print one clear line and exit 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    args = build_parser().parse_args(argv)
    try:
        run_dir, result = run(resolve_settings(args))
    except (DataFormatError, ValueError) as error:
        print(f"fedseqrec-train: error: {error}", file=sys.stderr)
        return 2
    test = result.test
    print(
        f"test HR@10 {test['hr@10']:.4f} NDCG@10 {test['ndcg@10']:.4f} "
        f"(unexcluded HR@10 {test['hr@10' + UNEXCLUDED_SUFFIX]:.4f}) "
        f"best epoch {result.best_epoch}; run folder: {run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
