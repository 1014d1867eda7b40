"""The statistics release's accounting, its reply checks and its audit (issue 16.3)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.federation.config import FederatedConfig
from common.federation.messages import (
    ARRAYS,
    METRICS,
    POPULARITY,
    TRANSITION_CELLS,
    TRANSITION_VALUES,
    USERS,
)
from common.privacy.accounting import Release, pld_epsilon, rdp_epsilon
from common.privacy.budget_split import user_level_noise
from common.privacy.calibration import noise_after_prior
from common.privacy.ledger import PrivacyLedger
from common.privacy.ledger_audit import audit_ledgers, guarantees
from common.privacy.run_audit import audit_path
from common.privacy.statistics import (
    exact_statistics,
    joint_noise_multiplier,
    noise_multipliers,
    release_statistics,
    summed_contributions,
)
from server.statistics_release import _add_reply, _recorded_release, publish_statistics
from server.user_level_privacy import UserLevelPrivacy
from tests.helpers import user_dp_run, write_cycle_attributes, write_cycle_log

ATTRIBUTES = [np.zeros(0, dtype=np.int64)] + [np.array([i % 3, 3 + i % 2]) for i in range(1, 9)]
HISTORIES = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([2, 7, 8, 1, 3])]


def test_sparse_sums_equal_the_dense_statistics() -> None:
    popularity, cells, values = summed_contributions(HISTORIES, ATTRIBUTES, 5, 2)
    dense_popularity, transitions = exact_statistics(HISTORIES, ATTRIBUTES, 5, 2)
    np.testing.assert_allclose(popularity, dense_popularity)
    assert np.all(np.diff(cells) > 0)  # sorted and unique: one value per cell
    np.testing.assert_allclose(transitions.ravel()[cells], values)
    assert np.count_nonzero(transitions) == len(cells)


def test_the_joint_release_is_one_gaussian_with_the_statistics_combined_noise() -> None:
    multipliers = noise_multipliers(4.0, 1e-5)
    joint = joint_noise_multiplier(multipliers)
    separate = rdp_epsilon([Release(z, 1.0, 1) for z in multipliers.values()], 1e-5)
    assert rdp_epsilon([Release(joint, 1.0, 1)], 1e-5) == pytest.approx(separate)
    assert pld_epsilon([Release(joint, 1.0, 1)], 1e-5) == pytest.approx(4.0, rel=0.01)
    assert joint_noise_multiplier({"a": 1.0, "b": 0.0}) == 0.0  # an exact statistic


def test_training_noise_after_the_statistics_keeps_the_composition_within_the_target() -> None:
    prior = [Release(2.0, 1.0, 1)]
    noise = noise_after_prior(prior, 8.0, 1e-5, 0.1, 50)
    total = pld_epsilon([*prior, Release(noise, 0.1, 50)], 1e-5)
    assert 8.0 * 0.99 <= total <= 8.0
    with pytest.raises(ValueError, match="already spend epsilon .* nothing is left for 50 more"):
        noise_after_prior([Release(0.3, 1.0, 1)], 8.0, 1e-5, 0.1, 50)


def test_a_run_config_splits_its_budget_between_statistics_and_rounds(tmp_path: Path) -> None:
    base: dict[str, Any] = {"dataset": "beauty", "item-attributes": "builtin", "dp": "user",
                            "partition-mode": "cohort", "statistics": True,
                            "target-epsilon": 8.0, "fraction-train": 0.1}  # fmt: skip
    split = FederatedConfig.from_run_config({**base, "num-server-rounds": 20,
                                             "statistics-share": 0.25})  # fmt: skip
    noise, statistics = user_level_noise(split, 1e-5)
    joint = joint_noise_multiplier(statistics)
    assert pld_epsilon([Release(joint, 1.0, 1)], 1e-5) == pytest.approx(2.0, rel=0.01)
    total = pld_epsilon([Release(joint, 1.0, 1), *[Release(noise, 0.1, 1)] * 20], 1e-5)
    assert 8.0 * 0.99 <= total <= 8.0  # as the ledger composes it: round by round
    only = FederatedConfig.from_run_config({**base, "num-server-rounds": 0})
    noise, statistics = user_level_noise(only, 1e-5)
    assert noise == 0.0
    total = pld_epsilon([Release(joint_noise_multiplier(statistics), 1.0, 1)], 1e-5)
    assert 8.0 * 0.99 <= total <= 8.0


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's task identity, as Flower's ServerApp runtime sets it before a run."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def reply(**arrays: np.ndarray) -> Message:
    """A statistics reply as a client sends it (users: 3)."""
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({name: Array(value) for name, value in arrays.items()}),
            METRICS: MetricRecord({USERS: 3}),
        }
    )
    sent = Message(RecordDict(), dst_node_id=3, message_type="query")
    return Message(content, reply_to=sent)


GOOD = {POPULARITY: np.ones(9), TRANSITION_CELLS: np.array([0, 10, 44]),
        TRANSITION_VALUES: np.array([0.5, 0.5, 1.0])}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({POPULARITY: np.ones(8)}, r"popularity has shape \(8,\), the catalogue needs \(9,\)"),
        ({TRANSITION_CELLS: np.array([0, 10, 45])}, r"transition cells outside 0\.\.44"),
        ({TRANSITION_CELLS: np.array([0, 10, -1])}, r"transition cells outside"),
        ({TRANSITION_CELLS: np.array([0, 10, 10])}, r"transition cells repeat"),
        ({TRANSITION_CELLS: np.array([0.0, 1.0, 2.0])}, r"cells integer"),
        ({TRANSITION_VALUES: np.array([0.5, np.nan, 1.0])}, r"non-finite values"),
        ({POPULARITY: np.full(9, np.inf)}, r"non-finite values"),
        ({TRANSITION_VALUES: np.array([0.5, 1.0])}, r"one length"),
        ({"extra": np.ones(2)}, r"are not the statistics'"),
    ],
)
@pytest.mark.usefixtures("server_task")
def test_a_malformed_reply_is_refused_and_adds_nothing(changes: dict, problem: str) -> None:
    popularity, transitions = np.zeros(9), np.zeros(45)
    assert re.search(problem, _add_reply(reply(**{**GOOD, **changes}), popularity, transitions))
    assert not popularity.any() and not transitions.any()


@pytest.mark.usefixtures("server_task")
def test_a_valid_reply_is_added() -> None:
    popularity, transitions = np.zeros(9), np.zeros(45)
    assert _add_reply(reply(**GOOD), popularity, transitions) == ""
    assert _add_reply(reply(**GOOD), popularity, transitions) == ""
    np.testing.assert_allclose(popularity, 2.0)
    np.testing.assert_allclose(transitions[[0, 10, 44]], [1.0, 1.0, 2.0])


def test_released_statistics_without_their_ledger_entry_fail_the_audit(tmp_path: Path) -> None:
    log = write_cycle_log(tmp_path / "cycle.csv")
    run = user_dp_run(tmp_path / "run-a", log, 2)
    assert not audit_path(run).failures
    stats = release_statistics(HISTORIES, ATTRIBUTES, 5, 4.0, 1e-5)
    stats.save(run / "statistics.npz")  # released, but the ledger never recorded it
    assert audit_path(run).failures == [
        f"{run / 'statistics.npz'} released but no dp-statistics entry of this run is in the ledger"
    ]


def test_statistics_and_dp_fedavg_compose_for_the_server_but_other_mixes_fail(
    tmp_path: Path,
) -> None:
    fields: dict[str, Any] = {"run_id": "r", "unit": "user", "clip_norm": 1.0,
                              "population": 943}  # fmt: skip
    ledger = PrivacyLedger(tmp_path / "a.jsonl")
    ledger.record_release("server", Release(2.0, 1.0, 1), delta=1e-5, round=0,
                          mechanism="dp-statistics", **fields)  # fmt: skip
    ledger.record_release("server", Release(2.0, 0.1, 1), delta=1e-5, round=1,
                          mechanism="dp-fedavg", **fields)  # fmt: skip
    report = audit_ledgers([ledger.path])
    assert report.failures == []
    (statement,) = guarantees(report)
    assert statement["mechanism"] == "dp-statistics + dp-fedavg"
    assert "released global statistics" in statement["against"]
    mixed = PrivacyLedger(tmp_path / "b.jsonl")
    mixed.record_release("n", Release(2.0, 1.0, 1), delta=1e-5, round=1,
                         mechanism="dp-statistics", **fields)  # fmt: skip
    mixed.record_release("n", Release(2.0, 0.1, 1), delta=1e-5, round=2,
                         mechanism="dp-sgd", **fields)  # fmt: skip
    assert audit_ledgers([mixed.path]).failures == [
        "n: entries mix mechanisms dp-sgd and dp-statistics; one guarantee cannot cover them"
    ]


def recorded_privacy(folder: Path, log: Path, record: bool) -> UserLevelPrivacy:
    """A statistics-only run's privacy state, its release recorded in the ledger or not."""
    config = FederatedConfig(
        dataset=str(log), partition_mode="cohort", dp="user", target_epsilon=8.0,
        statistics=True, item_attributes=str(write_cycle_attributes(log, folder / "a.csv")),
        num_server_rounds=0, results_dir=str(folder),
    )  # fmt: skip
    privacy = UserLevelPrivacy.from_config(config, 20, folder)
    if record:
        privacy.record_statistics(0)
    return privacy


def test_a_resumed_run_reuses_its_recorded_release_and_never_spends_twice(tmp_path: Path) -> None:
    log = write_cycle_log(tmp_path / "cycle.csv")
    stats = release_statistics(HISTORIES, ATTRIBUTES, 5, 4.0, 1e-5)
    fresh = tmp_path / "fresh"
    fresh.mkdir()  # killed before the ledger entry: nothing was released
    assert _recorded_release(fresh, recorded_privacy(fresh, log, record=False)) is None
    done = tmp_path / "done"
    done.mkdir()
    publish_statistics(done, stats, recorded_privacy(done, log, record=False), 0)
    reused = _recorded_release(done, recorded_privacy(done, log, record=False))
    assert reused is not None
    np.testing.assert_array_equal(reused.attribute_transitions, stats.attribute_transitions)
    lost = tmp_path / "lost"
    lost.mkdir()  # killed between the entry and the file, or the file removed
    with pytest.raises(RuntimeError, match="releasing them again would spend the budget twice"):
        _recorded_release(lost, recorded_privacy(lost, log, record=True))


def test_the_ledger_entry_comes_before_the_file_under_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a release computed in memory; the entry fails, then (another run) the write
    log = write_cycle_log(tmp_path / "cycle.csv")
    stats = release_statistics(HISTORIES, ATTRIBUTES, 5, 4.0, 1e-5)
    refused, crashed = tmp_path / "refused", tmp_path / "crashed"
    refused.mkdir(), crashed.mkdir()
    privacy = recorded_privacy(refused, log, record=False)
    monkeypatch.setattr(privacy, "record_statistics", lambda _round: 1 / 0)
    before = {p.name for p in refused.iterdir()}
    # Execute
    with pytest.raises(ZeroDivisionError):
        publish_statistics(refused, stats, privacy, 0)
    crashing = recorded_privacy(crashed, log, record=False)

    def crash_on_write(*_args: object, **_arrays: object) -> None:
        assert crashing.statistics_recorded()  # the entry is on disk before any byte
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash_on_write)
    with pytest.raises(OSError, match="disk full"):
        publish_statistics(crashed, stats, crashing, 0)
    # Assert: no released values anywhere without an entry; none half-written after one
    assert {p.name for p in refused.iterdir()} == before
    assert not [p for p in crashed.rglob("*") if "statistics" in p.name]
    assert crashing.statistics_recorded()
