"""The centralized trainer command: run folder contents and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.federation.config import FederatedConfig
from common.models import ModelConfig
from common.training.cli import build_parser, configs_from, main, resolve_settings


def tiny_log(tmp_path: Path) -> Path:
    """A CSV click log of 12 users walking a 9-item cycle."""
    log = tmp_path / "clicks.csv"
    rows = ["user,item,timestamp"] + [
        f"u{u},i{(u + t) % 9},{t}" for u in range(12) for t in range(7)
    ]
    log.write_text("\n".join(rows) + "\n")
    return log


def test_writes_a_complete_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--dataset",
            str(tiny_log(tmp_path)),
            "--model",
            "lstm",
            "--epochs",
            "2",
            "--dim",
            "8",
            "--max-len",
            "6",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "metrics.csv",
        "test_metrics.json",
        "checkpoint.pt",
        "valid_ndcg.png",
    } <= names
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test"]["hr@10"] <= 1.0
    assert 0.0 <= metrics["long_horizon_hr@10"] <= 1.0
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert "run folder" in capsys.readouterr().out


def test_malformed_file_gives_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "u.data"
    log.write_text("1\t2\t3\t4\n1\tx\t3\t4\n")
    assert main(["--dataset", str(log), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "u.data, line 2: field 'item' must be an integer" in error


def test_unknown_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.toml"
    config.write_text('dataset = "ml-100k"\nlearning_rate = 0.1\n')
    assert main(["--config", str(config)]) == 2
    assert "unknown setting(s) learning_rate" in capsys.readouterr().err


def test_config_file_values_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text("dropout = 2.0\n")
    assert main(["--config", str(config), "--out", str(tmp_path)]) == 2
    assert "dropout must be in [0, 1)" in capsys.readouterr().err


def test_tuning_flags_reach_the_model_and_the_run_folder(tmp_path: Path) -> None:
    flags = "--optimizer adamw --weight-decay 0.1 --label-smoothing 0.1 --norm pre"
    code = main(
        [
            "--dataset",
            str(tiny_log(tmp_path)),
            *flags.split(),
            "--ffn-multiplier",
            "2",
            "--epochs",
            "1",
            "--dim",
            "8",
            "--max-len",
            "6",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["optimizer"], config["norm"], config["label_smoothing"]) == ("adamw", "pre", 0.1)
    state = torch.load(run_dir / "checkpoint.pt")["state_dict"]
    assert tuple(state["blocks.0.feed_forward.0.weight"].shape) == (16, 8)


@pytest.mark.parametrize(("flag", "value"), [("--item-skip", True), ("--no-item-skip", False)])
def test_boolean_model_options_are_switches(flag: str, value: bool) -> None:
    settings = resolve_settings(build_parser().parse_args(["--model", "lstm", flag]))
    assert configs_from(settings)[0].item_skip is value
    unset = resolve_settings(build_parser().parse_args(["--model", "lstm"]))
    assert configs_from(unset)[0].item_skip is False


def test_rotary_positions_train_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = ["--dataset", str(tiny_log(tmp_path)), "--positions", "rotary", "--epochs", "1",
            "--dim", "8", "--max-len", "6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["positions"] == "rotary"
    assert "positions.weight" not in torch.load(run_dir / "checkpoint.pt")["state_dict"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--optimizer", "sgd"], "optimizer must be one of adam, adamw, got 'sgd'"),
        (["--norm", "mid"], "norm must be one of sasrec, pre, post, got 'mid'"),
    ],
)
def test_bad_tuning_flag_gives_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["--dataset", str(tiny_log(tmp_path)), *flags, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert message in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["--dataset", str(tiny_log(tmp_path)), "--device", "cuda", "--out", str(runs)]) == 2
    assert "device 'cuda' asked for, but CUDA is not available" in capsys.readouterr().err
    assert not runs.exists()


def test_defaults_are_the_shared_model_config() -> None:
    settings = resolve_settings(build_parser().parse_args([]))

    model, _ = configs_from(settings)

    assert model == ModelConfig() == FederatedConfig().model_config()


def test_columns_time_unit_and_attributes_from_a_config_file(tmp_path: Path) -> None:
    from common.training.cli import build_parser, load_data, resolve_settings

    log = tmp_path / "shop.csv"
    log.write_text("sku,shopper,ms\np2,c1,1700000000500\np1,c1,1700000000250\n")
    attrs = tmp_path / "attrs.csv"
    attrs.write_text("item,attribute\np1,red\np2,blue\n")
    config = tmp_path / "train.toml"
    config.write_text(
        f'dataset = "{log}"\ncolumns = "user=shopper,item=sku,timestamp=ms"\n'
        f'time-unit = "ms"\nitem-attributes = "{attrs}"\n'
    )

    settings = resolve_settings(build_parser().parse_args(["--config", str(config)]))
    dataset, attributes = load_data(settings)

    assert [list(dataset.item_ids[s - 1]) for s in dataset.sequences] == [["p1", "p2"]]
    assert dataset.timestamps is not None and dataset.timestamps[0].tolist() == [1.7e9, 1.7e9]
    assert attributes is not None and attributes.attribute_ids == ("blue", "red")
