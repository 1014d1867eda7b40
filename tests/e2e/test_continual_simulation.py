"""End to end: an int8-compressed run, then a run continued from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.partitioning import load_split
from common.federation.checkpoints import load_checkpoint
from common.federation.compression import encode_update
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from server.run_recorder import CHECKPOINT
from simulations.launch import main
from tests.helpers import TINY_RUN, free_port, metrics_rows, write_preset


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

    before, after = metrics_rows(first), metrics_rows(second)
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
    assert summary["started_from"] == {"checkpoint": str(saved), "round": 2, "ledger": None}
    assert load_checkpoint(second / CHECKPOINT).round == 3
