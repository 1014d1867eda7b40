"""Server-side bookkeeping: rows per round, best checkpoint, summary, failure record."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from common.data.partitioning import load_split
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings
from common.evaluation.scoring import evaluate_model, evaluate_on_device
from common.federation.checkpoints import dataset_item_ids, load_checkpoint
from common.federation.compression import UPDATE_BYTES_KEY
from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from common.models import build_model
from server import run_recorder
from server.node_errors import NodeError
from server.run_recorder import BEST_CHECKPOINT, CHECKPOINT, RunRecorder, record_failure
from server.side_by_side import SIDE_BY_SIDE, side_by_side_lines


def recorder_for(
    cycle_log: Path, results: Path, eval_every: int = 1, dp: str = "none"
) -> RunRecorder:
    config = FederatedConfig(
        dataset=str(cycle_log), model="lstm", dim=8, max_len=6, num_server_rounds=3,
        eval_every=eval_every, dp=dp, partition_mode="cohort" if dp == "user" else "cross-device",
        noise_multiplier=1.0 if dp != "none" else 0.0,
    )  # fmt: skip
    split = load_split(config.dataset)
    torch.manual_seed(0)
    return RunRecorder(results, build_model(config.model_config(), split.n_items), split, config, 4)


def reply(loss: float, examples: int) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"train_loss": loss, "num-examples": examples})})


def test_rounds_are_recorded_and_the_best_is_tested(cycle_log: Path, tmp_path: Path) -> None:
    recorder = recorder_for(cycle_log, tmp_path, eval_every=2)
    arrays = model_to_arrays(recorder.model)

    recorder.evaluate(0, arrays)
    for server_round in (1, 2, 3):
        merged = recorder.aggregate_train([reply(2.0, 10), reply(4.0, 30)], "num-examples")
        assert merged["train_loss"] == pytest.approx(3.5)
        recorder.evaluate(server_round, arrays)
    summary = recorder.finish()

    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["clients"] for r in rows] == ["", "2.0", "2.0", "2.0"]
    assert [bool(r["valid_ndcg@10"]) for r in rows] == [True, False, True, True]  # every 2 + last
    assert (
        summary["status"] == "completed" and summary["released_round"] == 0
    )  # same model: first wins
    assert summary["release_selection"] == "best validation NDCG@10"
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["round"] == 3
    assert torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)["round"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["test"]["count"] == 20


def test_a_round_without_replies_fails_the_run(cycle_log: Path, tmp_path: Path) -> None:
    recorder = recorder_for(cycle_log, tmp_path)
    arrays = model_to_arrays(recorder.model)
    recorder.evaluate(0, arrays)

    with pytest.raises(
        RuntimeError, match="round 1: no client returned a training result"
    ) as error:
        recorder.evaluate(1, arrays)
    record_failure(tmp_path, error.value)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {
        "status": "failed",
        "error": "RuntimeError: round 1: no client returned a training result",
        "node_errors": [],
        "run_id": tmp_path.name,
        "ledger": {},  # no ledger: nothing private was released
        "client_failures": 0,  # rejections.csv's rows: every attempt's
        "rejected_updates": 0,
    }


def test_a_failed_run_names_the_failed_nodes_once(tmp_path: Path) -> None:
    reason = (
        "<class 'common.data.loaders.DataFormatError'>:<'n.csv, line 3: field 'item' is empty'>"
    )
    errors = [NodeError(7, server_round, "train", reason) for server_round in (1, 2)]

    record_failure(tmp_path, RuntimeError("round 2: no client returned a training result"), errors)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["error"] == (
        "RuntimeError: round 2: no client returned a training result; "
        f"node 7 failed in round 2 (train): {reason}"
    )
    assert [e["server_round"] for e in summary["node_errors"]] == [1, 2]


def test_a_failed_run_names_a_multi_line_node_reason_in_one_line(tmp_path: Path) -> None:
    reason = "ActorDiedError: the actor died\n\tclass_name: ClientAppActor\n\tpid: 7"
    errors = [NodeError(node, 3, "train", reason) for node in (7, 8, 9)]

    record_failure(tmp_path, RuntimeError("round 3: a worker died"), errors)

    error = json.loads((tmp_path / "summary.json").read_text())["error"]
    assert error == (
        "RuntimeError: round 3: a worker died; node 7 failed in round 3 (train): "
        "ActorDiedError: the actor died; 2 more node errors in summary.json"
    )


def test_results_dir_must_be_absolute(cycle_log: Path) -> None:
    with pytest.raises(ValueError, match="results-dir must be an absolute path"):
        recorder_for(cycle_log, Path("relative/results"))


def test_bytes_sent_are_summed_and_averaged_per_round(cycle_log: Path, tmp_path: Path) -> None:
    recorder = recorder_for(cycle_log, tmp_path)
    arrays = model_to_arrays(recorder.model)
    recorder.evaluate(0, arrays)
    sent = [
        RecordDict({"m": MetricRecord({"train_loss": 1.0, "num-examples": 5, UPDATE_BYTES_KEY: b})})
        for b in (1000, 3000)
    ]

    recorder.aggregate_train(sent, "num-examples")
    recorder.evaluate(1, arrays)

    with (tmp_path / "metrics.csv").open(newline="") as handle:
        row = list(csv.DictReader(handle))[1]
    assert (row["update_bytes"], row["update_bytes_per_client"]) == ("4000.0", "2000.0")


def test_checkpoints_stand_alone_and_rounds_continue_from_an_offset(
    cycle_log: Path, tmp_path: Path
) -> None:
    config = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=8, max_len=6)
    split = load_split(config.dataset)
    model = build_model(config.model_config(), split.n_items)
    recorder = RunRecorder(tmp_path, model, split, config, 4, round_offset=5)

    recorder.evaluate(0, model_to_arrays(model))

    with (tmp_path / "metrics.csv").open(newline="") as handle:
        assert [r["round"] for r in csv.DictReader(handle)] == ["5"]
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT)
    assert checkpoint.round == 5 and checkpoint.model_config == config.model_config()
    assert checkpoint.item_ids == dataset_item_ids(str(cycle_log))
    assert checkpoint.valid["ndcg@10"] == recorder.untrained["ndcg@10"]


def test_a_dp_run_releases_its_last_round_not_a_best_one(cycle_log: Path, tmp_path: Path) -> None:
    recorder = recorder_for(cycle_log, tmp_path, dp="user")
    arrays = model_to_arrays(recorder.model)

    recorder.evaluate(0, arrays)
    for server_round in (1, 2, 3):
        recorder.aggregate_train([reply(2.0, 10)], "num-examples")
        recorder.evaluate(server_round, arrays)
    summary = recorder.finish()

    assert summary["released_round"] == 3 and summary["release_selection"] == "last round"
    assert summary["released_checkpoint"] == CHECKPOINT
    assert not (tmp_path / BEST_CHECKPOINT).exists()
    assert "not privatized" in summary["simulation_only_diagnostics"]


def scorer_for(n_items: int, model_weight: float) -> OnDeviceScorer:
    """A scorer whose item i has attribute i % 3 and random released statistics."""
    rng = np.random.default_rng(0)
    attributes = [np.array([], dtype=np.int64)] + [np.array([i % 3]) for i in range(n_items)]
    return OnDeviceScorer(
        attributes, 3, rng.random(n_items + 1), rng.random((3, n_items + 1)),
        ScorerSettings(model_weight=model_weight),
    )  # fmt: skip


@pytest.mark.parametrize(("model_weight", "passes"), [(0.0, 1), (0.5, 3)])
def test_a_scorer_without_the_model_is_evaluated_once_per_stage(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_weight: float,
    passes: int,
) -> None:  # fmt: skip
    recorder = recorder_for(cycle_log, tmp_path)
    recorder.on_device = {"valid": scorer_for(recorder.split.n_items, model_weight)}
    calls: list[str] = []
    evaluate = run_recorder.evaluate_on_device

    def counted(*args: Any) -> dict[str, float]:
        calls.append(args[3])  # the stage
        return evaluate(*args)

    monkeypatch.setattr(run_recorder, "evaluate_on_device", counted)

    figures = [recorder.metrics(recorder.split, "valid")]
    for _ in range(2):
        with torch.no_grad():
            for parameter in recorder.model.parameters():
                parameter.add_(1.0)  # another round's model
        figures.append(recorder.metrics(recorder.split, "valid"))

    assert calls == ["valid"] * passes
    assert figures[0]["count"] == recorder.split.n_users
    if model_weight == 0.0:
        assert figures[0] == figures[1] == figures[2]


def test_a_stage_given_a_new_release_is_scored_again(
    cycle_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = recorder_for(cycle_log, tmp_path)
    calls: list[str] = []
    evaluate = run_recorder.evaluate_on_device

    def counted(*args: Any) -> dict[str, float]:
        calls.append(args[3])
        return evaluate(*args)

    monkeypatch.setattr(run_recorder, "evaluate_on_device", counted)
    for _ in range(2):  # e.g. a resumed run that releases the stage's statistics again
        recorder.on_device = {"valid": scorer_for(recorder.split.n_items, 0.0)}
        recorder.metrics(recorder.split, "valid")
        recorder.metrics(recorder.split, "valid")
    assert calls == ["valid", "valid"]


@pytest.mark.parametrize("model_weight", [0.0, 0.5])
def test_a_blended_release_is_tested_beside_its_parts(
    cycle_log: Path, tmp_path: Path, model_weight: float
) -> None:
    recorder = recorder_for(cycle_log, tmp_path, dp="user")
    scorer = scorer_for(recorder.split.n_items, model_weight)
    recorder.on_device = {"valid": scorer, "test": scorer}
    recorder.evaluate(0, model_to_arrays(recorder.model))
    recorder.aggregate_train([reply(2.0, 10)], "num-examples")
    recorder.evaluate(1, model_to_arrays(recorder.model))

    summary = recorder.finish()

    if not model_weight:  # the model plays no part in what devices rank with
        assert SIDE_BY_SIDE not in summary and side_by_side_lines(summary) == []
        return
    figures = summary[SIDE_BY_SIDE]
    assert list(figures) == ["popularity", "scorer alone", "model alone", "blended"]
    assert figures["blended"] == summary["test"]
    alone = scorer.with_settings(ScorerSettings(model_weight=0.0))
    split, length = recorder.split, recorder.config.max_len
    assert figures["scorer alone"] == evaluate_on_device(
        alone, recorder.model, split, "test", length
    )
    assert figures["model alone"] == evaluate_model(recorder.model, split, "test", length)
    assert figures["scorer alone"] != figures["blended"]
    lines = side_by_side_lines(summary)
    assert lines[0].startswith("test figures on the same release")
    assert lines[-1].split() == ["blended", f"{summary['test']['hr@10']:.4f}",
                                 f"{summary['test']['ndcg@10']:.4f}"]  # fmt: skip


def test_a_model_trained_through_validation_has_no_validation_figures(
    cycle_log: Path, tmp_path: Path
) -> None:
    config = FederatedConfig(dataset=str(cycle_log), model="lstm", dim=8, max_len=6,
                             num_server_rounds=3, train_through_validation=True)  # fmt: skip
    split = load_split(config.dataset)
    model = build_model(config.model_config(), split.n_items)
    recorder = RunRecorder(tmp_path, model, split, config, 4)  # no DP: would select a best round
    arrays = model_to_arrays(model)

    recorder.evaluate(0, arrays)
    for server_round in (1, 2, 3):
        recorder.aggregate_train([reply(2.0, 10)], "num-examples")
        recorder.evaluate(server_round, arrays)
    summary = recorder.finish()

    assert summary["valid"] == {} and summary["test"]["count"] == split.n_users
    assert summary["release_selection"] == "last round" and summary["released_round"] == 3
    assert not (tmp_path / BEST_CHECKPOINT).exists()
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        assert all(row["valid_hr@10"] == "" for row in csv.DictReader(handle))
