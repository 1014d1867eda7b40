"""Crash and resume: the server state saved each round, and a run resumed from it."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from common.federation.config import FederatedConfig
from common.federation.messages import model_to_arrays
from server.fault_tolerance import FaultLog, RoundFaults
from server.resume.flower_optimizer import optimizer_state, restore_optimizer
from server.resume.keeper import RoundStateKeeper, SkipRounds
from server.resume.restore import resume_run
from server.resume.state import (
    ResumeError,
    ServerState,
    keep_file,
    load_server_state,
    save_server_state,
)
from server.run_recorder import CHECKPOINT
from simulations.launch import main
from tests.helpers import (
    killed_dp_run,
    metrics_rows,
    resumable_config,
    resumable_recorder,
    write_preset,
)

NAMES = ["a", "b"]
TRAINED = RecordDict({"metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10})})


def fake_state(**changes: object) -> ServerState:
    state = ServerState(
        round=0, round_offset=0, model_file="", best_file="", best_score=-1.0, best_round=-1,
        untrained={}, round_seconds=[], refusals={}, metrics_rows=0, ledger={}, run_config={},
    )  # fmt: skip
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


def test_fedadam_moments_and_the_random_state_survive_a_save(tmp_path: Path) -> None:
    strategy = FedAdam()
    strategy.m_t = {"a": np.ones(3, np.float32), "b": np.full((2, 2), 2.0, np.float32)}
    strategy.v_t = {"a": np.zeros(3, np.float32), "b": np.full((2, 2), 0.5, np.float32)}
    random.seed(3)
    random.random()
    expected_draw = random.getstate()
    state = fake_state(optimizer=optimizer_state(SkipRounds(strategy, 0), NAMES),
                       python_random=expected_draw)  # fmt: skip

    save_server_state(tmp_path, state)
    loaded = load_server_state(tmp_path)
    fresh = FedAdam()
    restore_optimizer(SkipRounds(fresh, 0), loaded.optimizer, NAMES)

    assert fresh.m_t is not None and fresh.v_t is not None
    for name in NAMES:
        np.testing.assert_array_equal(fresh.m_t[name], strategy.m_t[name])
        np.testing.assert_array_equal(fresh.v_t[name], strategy.v_t[name])
    random.seed(99)
    random.setstate((loaded.python_random[0], tuple(loaded.python_random[1]), None))
    after = random.random()
    random.setstate(expected_draw)
    assert after == random.random()


def test_fedavgm_momentum_survives_a_save(tmp_path: Path) -> None:
    strategy = FedAvgM(server_momentum=0.9)
    strategy.momentum_vector = [np.ones(2, np.float32), np.arange(4, dtype=np.float32)]
    save_server_state(tmp_path, fake_state(optimizer=optimizer_state(strategy, NAMES)))
    fresh = FedAvgM(server_momentum=0.9)
    restore_optimizer(fresh, load_server_state(tmp_path).optimizer, NAMES)
    assert fresh.momentum_vector is not None
    for ours, theirs in zip(fresh.momentum_vector, strategy.momentum_vector, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_state_for_another_strategy_is_refused(tmp_path: Path) -> None:
    strategy = FedAvgM(server_momentum=0.9)
    strategy.momentum_vector = [np.ones(2, np.float32), np.ones(2, np.float32)]
    saved = optimizer_state(strategy, NAMES)
    with pytest.raises(ResumeError, match="holds 'momentum_vector', which FedAdam lacks"):
        restore_optimizer(FedAdam(), saved, NAMES)


def test_skipped_rounds_send_nothing_and_keep_the_model() -> None:
    skip = SkipRounds(FedAvg(), through=3)
    assert list(skip.configure_train(3, ArrayRecord(), None, None)) == []  # type: ignore[arg-type]
    assert skip.aggregate_train(2, []) == (None, None)
    assert list(skip.configure_evaluate(1, ArrayRecord(), None, None)) == []  # type: ignore[arg-type]
    assert skip.aggregate_evaluate(3, []) is None


def test_a_resumed_run_counts_a_release_that_was_not_saved(cycle_log: Path, tmp_path: Path) -> None:
    # Prepare: rounds 1-3 saved, round 4 released (ledger) and then the kill
    folder = tmp_path / "run"
    killed_dp_run(cycle_log, folder, saved=3, released=4)
    with (folder / "metrics.csv").open("a") as handle:
        handle.write("4,5.0,10")  # half a row written when the kill landed
    (folder / ".checkpoint.pt.k1ll3d").write_bytes(b"half a checkpoint")  # a cut-short write
    # Execute
    config = resumable_config(cycle_log, folder, resume_from=str(folder))
    recorder = resumable_recorder(config)
    resumption = resume_run(config, recorder.model, recorder)
    # Assert: trains on from round 3's model, numbered after round 4
    assert resumption.state.round == 3 and resumption.skip_through == 4
    assert resumption.state.resumes[-1]["rounds_lost"] == 1
    assert [row["round"] for row in metrics_rows(folder)] == ["0", "1", "2", "3"]
    assert not (folder / ".checkpoint.pt.k1ll3d").exists()  # removed: its release is ledgered
    lines = (folder / "metrics.csv").read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\r\n") for line in lines)  # one line ending, as csv writes
    saved = torch.load(folder / CHECKPOINT, weights_only=True)
    assert saved["round"] == 3
    for name, value in recorder.model.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value)
    assert len(recorder.round_seconds) == 3


def test_a_resumed_run_without_a_lost_release_continues_after_the_saved_round(
    cycle_log: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    killed_dp_run(cycle_log, folder, saved=2, released=2)
    config = resumable_config(cycle_log, folder, resume_from=str(folder))
    recorder = resumable_recorder(config)
    resumption = resume_run(config, recorder.model, recorder)
    assert (resumption.state.round, resumption.skip_through) == (2, 2)
    assert json.loads((folder / "state" / "server_state.json").read_text())["round"] == 2
    assert sorted(p.name for p in (folder / "state").glob("*.pt")) == [
        "model-round-2.pt", "server_state.pt",
    ]  # fmt: skip


def test_a_resumed_run_keeps_the_faults_of_every_attempt_on_the_record(
    cycle_log: Path, tmp_path: Path
) -> None:
    # Prepare: rounds 1 and 2 saved with their faults; round 3's written, then the kill
    folder = tmp_path / "run"
    config = resumable_config(cycle_log, folder, dp="none", noise_multiplier=0.0)
    recorder, log = resumable_recorder(config), FaultLog(folder)
    keeper = RoundStateKeeper(recorder, FedAvg(), config, fault_log=log)
    keeper.evaluate(0, model_to_arrays(recorder.model))
    for server_round, faults in ((1, [(7, "boom")]), (2, []), (3, [(8, "late"), (9, "x")])):
        log.record(RoundFaults(server_round, 5, 4 - len(faults), faults, [(6, "NaN")]))
        if server_round < 3:
            recorder.aggregate_train([TRAINED], "num-examples")
            keeper.evaluate(server_round, model_to_arrays(recorder.model))

    # Execute: resume in the same folder
    resumed = resumable_config(cycle_log, folder, dp="none", noise_multiplier=0.0,
                         resume_from=str(folder))  # fmt: skip
    recorder = resumable_recorder(resumed)
    again = FaultLog(folder)
    RoundStateKeeper(recorder, FedAvg(), resumed, resume_run(resumed, recorder.model, recorder),
                     again)  # fmt: skip
    again.record(RoundFaults(3, 5, 4, [(8, "late")]))

    # Assert: the totals and rejections.csv hold rounds 1 and 2 as saved, the lost first
    # attempt at round 3 (its failures happened: they stay counted), then the new round 3
    assert again.summary() == {"degraded_rounds": 3, "client_failures": 4, "rejected_updates": 3}
    assert again.rounds == 3
    lines = (folder / "rejections.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in lines] == [
        ["round", "node_id", "kind"], ["1", "7", "failed"], ["1", "6", "rejected"],
        ["2", "6", "rejected"], ["3", "8", "failed"], ["3", "9", "failed"],
        ["3", "6", "rejected"], ["3", "8", "failed"]]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": 0.5}, r"run config differs from the saved run's: lr 0.001 \(saved\) vs 0.5"),
        ({"num_server_rounds": 9}, "num-server-rounds 6 \\(saved\\) vs 9"),
    ],
)
def test_a_changed_config_is_refused(
    cycle_log: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    folder = tmp_path / "run"
    killed_dp_run(cycle_log, folder, saved=1, released=1)
    config = resumable_config(cycle_log, folder, resume_from=str(folder), **changes)
    with pytest.raises(ResumeError, match=message):
        resume_run(config, resumable_recorder(config).model, resumable_recorder(config))


def test_a_completed_run_is_not_resumed(cycle_log: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    killed_dp_run(cycle_log, folder, saved=1, released=1)
    (folder / "summary.json").write_text('{"status": "completed"}')
    config = resumable_config(cycle_log, folder, resume_from=str(folder))
    with pytest.raises(ResumeError, match="this run completed; there is nothing to resume"):
        resume_run(config, resumable_recorder(config).model, resumable_recorder(config))


def test_a_folder_without_state_says_so(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no saved server state"):
        load_server_state(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resume_from": "relative/run"}, "resume-from must be an absolute folder"),
        ({"resume_from": "/a", "results_dir": "/b"}, "must be the run's own folder"),
        ({"resume_from": "/a", "secure_aggregation": True}, "secure-aggregation cannot be"),
    ],
)
def test_resume_from_is_checked_with_the_config(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig(**changes)  # type: ignore[arg-type]


def test_the_launcher_refuses_what_it_cannot_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--resume", str(tmp_path)]) == 2
    assert f"cannot resume: {tmp_path}/config.json: not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"preset": "x", "run_config": {}}))
    assert main(["--resume", str(tmp_path)]) == 2
    assert "no saved server state" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path), "--set", "lr=1"]) == 2
    assert "drop --set" in capsys.readouterr().err


def test_a_new_launch_does_not_take_resume_from(
    cycle_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = write_preset(tmp_path / "tiny.toml", {"dataset": str(cycle_log)})
    for value in (json.dumps(str(tmp_path)), ""):  # an empty value is refused alike (exit 2)
        argv = ["--preset", str(preset), "--set", f"resume-from={value}"]
        assert main([*argv, "--results", str(tmp_path / "results")]) == 2
        assert "resume-from: use --resume RUN_DIR" in capsys.readouterr().err
        assert not (tmp_path / "results").exists()


def test_keeping_a_file_onto_its_own_hard_link_leaves_no_temporary_behind(tmp_path: Path) -> None:
    # Prepare: the state's model and checkpoint.pt are one file (as after a save)
    source, target = tmp_path / "state-model.pt", tmp_path / "checkpoint.pt"
    source.write_bytes(b"model")
    keep_file(source, target)
    # Execute: restoring it (a resume) onto the same file
    keep_file(source, target)
    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "state-model.pt"]
    assert target.read_bytes() == b"model"
