"""The centralized trainer command: run folder contents and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.train_cli import main


def test_writes_a_complete_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "clicks.csv"
    rows = ["user,item,timestamp"] + [
        f"u{u},i{(u + t) % 9},{t}" for u in range(12) for t in range(7)
    ]
    log.write_text("\n".join(rows) + "\n")
    code = main(
        [
            "--dataset",
            str(log),
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
