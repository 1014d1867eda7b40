"""End to end: a run releases DP global statistics through Flower, ledgers and audits them,
evaluates with the on-device scorer, and a device recommends from the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.recommend import main as recommend_main
from common.data.attributes import load_item_attributes
from common.evaluation.on_device import OnDeviceScorer, ScorerSettings, attribute_lists
from common.federation.checkpoints import dataset_item_ids
from common.privacy.accounting import Release, pld_epsilon
from common.privacy.ledger import read_ledger
from common.privacy.statistics import DPStatistics, joint_noise_multiplier
from tests.helpers import BASE, launch_run, write_cycle_attributes

TARGET = 8.0


def settings(log: Path, attributes: Path, **extra: object) -> dict[str, object]:
    """A cohort run of the cycle log's 20 users releasing statistics under user-level DP."""
    run = {**BASE, "dataset": str(log), "partition-mode": "cohort", "users-per-client": 10,
           "fraction-train": 0.5, "dp": "user", "target-epsilon": TARGET, "statistics": True,
           "item-attributes": str(attributes), "scorer-similarity-weight": 1.0}  # fmt: skip
    run.pop("noise-multiplier")
    return {**run, **extra}


@pytest.mark.simulation
def test_statistics_and_training_rounds_share_one_audited_budget(
    cycle_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    attributes = write_cycle_attributes(cycle_log, tmp_path / "attributes.csv")
    run = settings(cycle_log, attributes, **{"num-server-rounds": 2, "statistics-share": 0.5,
                                             "scorer-model-weight": 0.5})  # fmt: skip

    folder = launch_run(tmp_path, "stats", run)

    summary = json.loads((folder / "summary.json").read_text())
    entries = read_ledger(folder / "ledger" / "server.jsonl")
    assert [(e.round, e.mechanism) for e in entries] == [
        (0, "dp-statistics"), (1, "dp-fedavg"), (2, "dp-fedavg"),
    ]  # fmt: skip
    stats = DPStatistics.load(folder / "statistics.npz")
    joint = joint_noise_multiplier(stats.noise_multipliers)
    assert entries[0].noise_multiplier == pytest.approx(joint)
    assert (entries[0].sampling_rate, entries[0].clip_norm) == (1.0, 1.0)
    delta = 1 / (10 * 20)
    assert entries[0].epsilon == pytest.approx(TARGET / 2, rel=0.01)  # its share, alone
    composed = pld_epsilon([Release(joint, 1.0, 1)] + [entries[1].release()] * 2, delta)
    assert entries[-1].epsilon == pytest.approx(composed)
    assert TARGET * 0.99 <= entries[-1].epsilon <= TARGET  # the rounds got what was left
    assert summary["privacy"]["epsilon"] == pytest.approx(entries[-1].epsilon)
    assert summary["privacy"]["mechanism"] == "dp-statistics + dp-fedavg"
    assert summary["scoring"].startswith("on-device scorer")
    assert json.loads((folder / "audit.json").read_text())["passed"]

    # the test figures are the released statistics' scorer on the test inputs
    scorer_json = json.loads((folder / "scorer.json").read_text())
    assert scorer_json["settings"]["similarity_weight"] == 1.0
    assert scorer_json["settings"]["model_weight"] == 0.5
    assert 0.0 <= summary["test"]["hr@10"] <= 1.0

    # the trained model's part, side by side with the scorer alone and popularity
    figures = summary["side_by_side"]
    assert sorted(figures) == ["blended", "model alone", "popularity", "scorer alone"]
    assert figures["blended"] == summary["test"]
    assert all(figures[row]["count"] == summary["test"]["count"] for row in figures)
    printed = capsys.readouterr().out
    assert "test figures on the same release (model weight 0.5 in the blend)" in printed
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    assert rows["blended"] == [f"{summary['test'][m]:.4f}" for m in ("hr@10", "ndcg@10")]
    assert rows["popularity"] == [f"{figures['popularity'][m]:.4f}" for m in ("hr@10", "ndcg@10")]


@pytest.mark.simulation
def test_a_statistics_only_run_spends_the_whole_budget_and_serves_a_device(
    cycle_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    attributes = write_cycle_attributes(cycle_log, tmp_path / "attributes.csv")

    folder = launch_run(
        tmp_path, "stats-only", settings(cycle_log, attributes, **{"num-server-rounds": 0})
    )

    summary = json.loads((folder / "summary.json").read_text())
    (entry,) = read_ledger(folder / "ledger" / "server.jsonl")
    assert (entry.round, entry.mechanism) == (0, "dp-statistics")
    assert TARGET * 0.98 <= entry.epsilon <= TARGET
    assert (summary["rounds"], summary["released_round"]) == (0, 0)

    # a device: the same scorer from the run folder, history excluded
    capsys.readouterr()
    assert recommend_main(["--checkpoint", str(folder / "checkpoint.pt"), "--items", "i3,i4,i5",
                           "--k", "5", "--json"]) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    item_ids = dataset_item_ids(str(cycle_log))
    lists, n_attributes = attribute_lists(load_item_attributes(str(attributes), item_ids))
    stats = DPStatistics.load(folder / "statistics.npz")
    settings_used = ScorerSettings(**json.loads((folder / "scorer.json").read_text())["settings"])
    expected = OnDeviceScorer.from_release(stats, lists, settings_used).top_k(
        np.array([item_ids.index(i) + 1 for i in ("i3", "i4", "i5")]), 5
    )
    assert [r["item"] for r in shown["recommendations"]] == [item_ids[i - 1] for i in expected]
    assert shown["scorer"]["kind"] == "on-device"
