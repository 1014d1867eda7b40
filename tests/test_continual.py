"""Continual learning: a run goes on from a checkpoint; compressed updates end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from common.checkpoints import Checkpoint, dataset_item_ids, load_checkpoint, save_checkpoint
from common.compression import encode_update
from common.federated import FederatedConfig, model_to_arrays
from common.model_evaluation import evaluate_model
from common.models import build_model
from common.partitioning import load_split
from server.run_recorder import CHECKPOINT, RunRecorder
from server.server_app import continue_from_checkpoint
from simulations.launch import main
from tests.test_simulation import TINY_RUN, free_port, write_preset


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


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


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

    (first,) = rows(tmp_path / "run")
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
    assert code == 1 and len(err) == 1 and not results.exists()
    assert err[0].startswith(f"error: initial-checkpoint {tmp_path / 'dim4.pt'}: model config")
    assert "dim 4 (checkpoint) vs 8 (run)" in err[0]
    main(["--preset", str(preset), "--results", str(results), "--set", "initial-checkpoint=no.pt"])
    assert "no.pt': file not found" in capsys.readouterr().err


@pytest.mark.simulation
def test_int8_run_then_a_run_continued_from_its_checkpoint(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    settings = {"dataset": str(cycle_log), **TINY_RUN, "update-compression": "int8"}
    preset = write_preset(tmp_path / "tiny.toml", settings)
    first_root, second_root = tmp_path / "first", tmp_path / "second"
    port = str(free_port())

    assert main(["--preset", str(preset), "--results", str(first_root), "--port", port]) == 0
    (first,) = first_root.iterdir()
    saved = first / CHECKPOINT
    assert main(["--preset", str(preset), "--results", str(second_root), "--port", port,
                 "--set", "num-server-rounds=1", "--set", f"initial-checkpoint={saved}",
                 "--set", "update-compression=none"]) == 0  # fmt: skip
    (second,) = second_root.iterdir()

    before, after = rows(first), rows(second)
    ndcg = [float(r["valid_ndcg@10"]) for r in before]
    assert ndcg[2] > ndcg[0] + 0.1  # int8 updates still train the model
    config = FederatedConfig.from_run_config(settings)
    model = build_model(config.model_config(), load_split(config.dataset).n_items)
    arrays = model_to_arrays(model)
    int8_bytes = encode_update(arrays, arrays, "int8").count_bytes()
    assert [float(r["update_bytes_per_client"]) for r in before[1:]] == [int8_bytes] * 2
    assert float(before[1]["update_bytes"]) == 20 * int8_bytes
    assert [r["round"] for r in after] == ["2", "3"]
    assert float(after[0]["valid_ndcg@10"]) == pytest.approx(ndcg[2], abs=1e-12)
    assert load_checkpoint(saved).valid["ndcg@10"] == pytest.approx(ndcg[2], abs=1e-12)
    assert float(after[1]["update_bytes_per_client"]) == arrays.count_bytes()  # float32
    summary = json.loads((second / "summary.json").read_text())
    assert summary["started_from"] == {"checkpoint": str(saved), "round": 2}
    assert load_checkpoint(second / CHECKPOINT).round == 3
