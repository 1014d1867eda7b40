"""Continual learning: a run goes on from a checkpoint; compressed updates end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from common.data.partitioning import load_split
from common.evaluation.scoring import evaluate_model
from common.federation.checkpoints import (
    Checkpoint,
    dataset_item_ids,
    save_checkpoint,
)
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from server.run_recorder import RunRecorder
from server.server_app import continue_from_checkpoint
from simulations.launch import main
from tests.helpers import metrics_rows


def saved_checkpoint(config: FederatedConfig, path: Path, seed: int = 3) -> Checkpoint:
    """A checkpoint of round 4 with its validation metrics, as the run recorder writes it."""
    split = load_split(config.dataset)
    torch.manual_seed(seed)
    model = build_model(config.model_config(), split.n_items)
    valid = evaluate_model(model, split, "valid", config.max_len)
    checkpoint = Checkpoint(
        4, model.state_dict(), config.model_config(), dataset_item_ids(config.dataset),
        config.dataset, valid,
    )  # fmt: skip
    save_checkpoint(path, checkpoint)
    return checkpoint


def test_a_continued_run_starts_at_the_checkpoints_validation_ndcg(
    cycle_log: Path, tmp_path: Path
) -> None:
    base = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=8, max_len=6)
    checkpoint = saved_checkpoint(base, tmp_path / "start.pt")
    config = dataclasses.replace(base, initial_checkpoint=str(tmp_path / "start.pt"))
    split = load_split(config.dataset)
    torch.manual_seed(99)  # a different fresh model: the checkpoint must replace it
    model = build_model(config.model_config(), split.n_items)

    offset = continue_from_checkpoint(config, model, list(checkpoint.item_ids))
    recorder = RunRecorder(tmp_path / "run", model, split, config, 4, round_offset=offset)
    recorder.evaluate(0, model_to_arrays(model))

    (first,) = metrics_rows(tmp_path / "run")
    assert offset == 4 and first["round"] == "4"
    assert float(first["valid_ndcg@10"]) == pytest.approx(checkpoint.valid["ndcg@10"], abs=1e-12)


def test_a_checkpoint_that_does_not_fit_stops_the_launch_in_one_line(
    cycle_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=4, max_len=10)
    saved_checkpoint(other, tmp_path / "dim4.pt")
    preset = tmp_path / "tiny.toml"
    preset.write_text(f'dataset = "{cycle_log}"\nmodel = "lstm"\ndim = 8\nmax-len = 10\n')
    results = tmp_path / "results"

    code = main(["--preset", str(preset), "--results", str(results),
                 "--set", f"initial-checkpoint={tmp_path / 'dim4.pt'}"])  # fmt: skip

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not results.exists()
    assert err[0].startswith(f"error: initial-checkpoint {tmp_path / 'dim4.pt'}: model config")
    assert "dim 4 (checkpoint) vs 8 (run)" in err[0]
    main(["--preset", str(preset), "--results", str(results), "--set", "initial-checkpoint=no.pt"])
    assert "no.pt': file not found" in capsys.readouterr().err
