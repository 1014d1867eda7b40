"""Failures and hostile updates: fault selection, update checks, min-replies, robust strategies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.supercore.task_identity import TaskIdentity

from client.fault_injection import SCALE, corrupt_reply, fault_of, faulty_partitions
from common.federation.config import FederatedConfig
from common.federation.messages import ROUND_ATTEMPT
from common.federation.reliability import required_replies
from common.federation.strategies import build_strategy
from server.cohort_aggregation import CohortAggregation
from server.fault_tolerance import (
    FaultLog,
    ReplyScreening,
    RoundFaults,
    TooFewRepliesError,
    WorkerDiedError,
    short_reason,
)
from server.reply_order import canonical_order
from server.update_validation import update_problem
from simulations.launch import outcome_word

GLOBAL = ArrayRecord({"w": Array(np.zeros((2, 3), dtype=np.float32)),
                      "b": Array(np.zeros(3, dtype=np.float32))})  # fmt: skip


def arrays(w: float = 1.0, **changes: np.ndarray) -> ArrayRecord:
    """Weights ``w`` everywhere, with some arrays replaced."""
    values = {"w": np.full((2, 3), w, dtype=np.float32), "b": np.full(3, w, dtype=np.float32)}
    return ArrayRecord({name: Array(value) for name, value in {**values, **changes}.items()})


def reply(node: int, record: ArrayRecord | None = None, weight: float = 10.0) -> Message:
    """A train reply from ``node`` (an error reply when ``record`` is None)."""
    sent = Message(RecordDict({"arrays": GLOBAL}), dst_node_id=node, message_type="train")
    if record is None:
        return Message(Error(code=0, reason="<class 'X'>:<'Message: boom'>"), reply_to=sent)
    content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, reply_to=sent)


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's task identity, as Flower's ServerApp runtime sets it before a run."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


# fault selection


def test_fault_selection_is_an_exact_share_and_the_same_every_time() -> None:
    first = [faulty_partitions(7, server_round, 10, 0.3) for server_round in range(1, 6)]
    again = [faulty_partitions(7, server_round, 10, 0.3) for server_round in range(1, 6)]

    assert first == again
    assert all(len(chosen) == 3 and chosen <= set(range(10)) for chosen in first)
    assert len({frozenset(chosen) for chosen in first}) > 1  # other clients in other rounds
    assert (
        faulty_partitions(8, 1, 10, 0.3) != first[0] or faulty_partitions(9, 1, 10, 0.3) != first[0]
    )
    assert faulty_partitions(7, 1, 10, 0.0) == set()


def test_a_client_knows_its_fault_from_seed_round_and_partition_only() -> None:
    config = FederatedConfig(fault_rate=0.3, fault_kind="nan", fault_seed=7)
    chosen = faulty_partitions(7, 4, 10, 0.3)

    kinds = {p: fault_of(config, 4, {"partition-id": p, "num-partitions": 10}) for p in range(10)}

    assert {p for p, kind in kinds.items() if kind} == chosen
    assert set(kinds.values()) == {"nan", ""}
    assert fault_of(config, 4, {"data-path": "x.csv"}) == ""  # an edge node: never injected
    assert fault_of(FederatedConfig(), 4, {"partition-id": 0, "num-partitions": 1}) == ""
    retried = {fault_of(config, 4, {"partition-id": p, "num-partitions": 10}, attempt=2)
               for p in chosen}  # fmt: skip
    assert retried == {""}  # injected faults are transient: a retry is answered


def test_corrupted_replies_carry_nan_or_a_scaled_update() -> None:
    nan = corrupt_reply("nan", reply(1, arrays(1.0)), GLOBAL, deltas=False)
    scaled = corrupt_reply("scale", reply(2, arrays(1.0)), arrays(0.5), deltas=False)
    summed = corrupt_reply("scale", reply(3, arrays(1.0)), GLOBAL, deltas=True)

    assert np.isnan(nan.content.array_records["arrays"]["w"].numpy()).all()
    assert np.allclose(scaled.content.array_records["arrays"]["w"].numpy(), 0.5 + SCALE * 0.5)
    assert np.allclose(summed.content.array_records["arrays"]["b"].numpy(), SCALE)
    assert scaled.content.array_records["arrays"]["w"].numpy().dtype == np.float32


# update validation


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (ArrayRecord({"w": Array(np.ones((2, 3), np.float32))}), "missing ['b']"),
        (arrays(b=np.ones(4, np.float32)), "'b' has shape (4,)"),
        (arrays(b=np.ones(3, np.int64)), "'b' has dtype int64"),
        (arrays(b=np.array([1, np.inf, 1], np.float32)), "'b' has non-finite values"),
        (arrays(3.0), "update norm 9 exceeds max-update-norm 5"),
    ],
)
def test_invalid_updates_are_named_with_their_problem(record: ArrayRecord, problem: str) -> None:
    assert problem in update_problem(record, GLOBAL, deltas=False, max_update_norm=5.0)


def test_a_valid_update_passes_and_the_norm_bound_can_be_off() -> None:
    as_float64 = ArrayRecord({k: Array(v.numpy().astype(np.float64)) for k, v in GLOBAL.items()})
    assert update_problem(arrays(2.0), as_float64, deltas=False) == ""  # FedAdam's float64
    assert update_problem(arrays(2.0), GLOBAL, deltas=False, max_update_norm=6.5) == ""
    assert update_problem(arrays(300.0), GLOBAL, deltas=False, max_update_norm=0.0) == ""
    # a cohort's reply is already an update (a sum of them): its own norm is what counts
    assert update_problem(arrays(1.0), arrays(9.0), deltas=True, max_update_norm=5.0) == ""
    assert "update norm 6" in update_problem(arrays(2.0), GLOBAL, deltas=True, max_update_norm=5.0)


# reply screening and min-replies


def screening(
    min_replies: float = 1.0, **kwargs: object
) -> tuple[ReplyScreening, list[RoundFaults]]:
    """Screening around FedAvg that was asked nodes 1..5, and the rounds it reported."""
    seen: list[RoundFaults] = []
    strategy = ReplyScreening(FedAvg(), min_replies=min_replies, on_round=seen.append, **kwargs)  # type: ignore[arg-type]
    strategy._reference, strategy._asked = GLOBAL, [1, 2, 3, 4, 5]
    return strategy, seen


def test_a_round_aggregates_the_valid_replies_and_counts_the_rest() -> None:
    strategy, seen = screening(min_replies=0.4)
    replies = [reply(1, arrays(1.0)), reply(2, arrays(1.0)), reply(3, arrays(np.nan)),
               reply(4)]  # fmt: skip  # node 5 never answered

    aggregated, _ = strategy.aggregate_train(1, replies)

    assert aggregated is not None and np.allclose(aggregated["w"].numpy(), 1.0)
    (faults,) = seen
    assert (faults.asked, faults.valid, faults.degraded) == (5, 2, True)
    assert faults.failures == [(5, "no reply within the round timeout"), (4, "boom")]
    assert faults.rejections == [(3, "'w' has non-finite values")]


def test_too_few_valid_replies_stop_the_run_with_the_reasons() -> None:
    strategy, _ = screening(min_replies=0.5)

    expected = (
        r"round 2: 2 valid replies of 5 clients asked, min-replies 0.5 needs 3 "
        r"\(3 failed, 0 rejected, 0 of 0 round-retries used: node 4: no reply"
    )
    with pytest.raises(TooFewRepliesError, match=expected):
        strategy.aggregate_train(2, [reply(1, arrays()), reply(2, arrays()), reply(3)])


class ScriptedGrid:
    """A grid of nodes 1..5 that answers each retry with the next scripted replies."""

    def __init__(self, *answers: dict[int, ArrayRecord | None]) -> None:
        self.answers = list(answers)  # per retry: node -> update (None: an error reply)
        self.sent: list[list[Message]] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4, 5]

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        self.sent.append(list(messages))
        answer = self.answers.pop(0)
        return [reply(m.metadata.dst_node_id, answer[m.metadata.dst_node_id])
                for m in messages if m.metadata.dst_node_id in answer]  # fmt: skip


class CountingFedAvg(FedAvg):
    """FedAvg that counts its aggregations: where a cohort's noisy sum would be formed."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.aggregated: list[int] = []

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        self.aggregated.append(len(replies))
        return super().aggregate_train(server_round, replies)


def retried_round(
    grid: ScriptedGrid,
    first: list[Message],
    min_replies: float,
    inner: Strategy | None = None,
) -> tuple[CountingFedAvg, list[RoundFaults], tuple[ArrayRecord | None, MetricRecord | None]]:
    """Round 4 configured for nodes 1..5 over ``grid`` (2 retries), aggregated from ``first``."""
    counting, seen = CountingFedAvg(), []
    strategy = ReplyScreening(inner or counting, min_replies=min_replies, on_round=seen.append,
                              retries=2, timeout=7.0, deltas=inner is not None)  # fmt: skip
    list(strategy.configure_train(4, GLOBAL, ConfigRecord({"lr": 0.1}), grid))  # type: ignore[arg-type]
    return counting, seen, strategy.aggregate_train(4, first)


def test_a_user_dp_round_is_released_once_after_its_retries_and_never_when_they_fail() -> None:
    # Prepare: cohort sums with noise; the ledger entry is written on release
    def noisy_cohorts(released: list[int]) -> CohortAggregation:
        return CohortAggregation(FedAvg(fraction_evaluate=0.0), noise_multiplier=1.0,
                                 clip_norm=1.0, expected_users=50.0,
                                 on_release=released.append)  # fmt: skip

    recovered: list[int] = []
    exhausted: list[int] = []
    first = [reply(1, arrays(0.1)), reply(2), reply(3, arrays(0.1))]  # 4 and 5 silent

    # Execute: the retry brings nodes 2 and 4; in the second run every retry fails
    retried_round(ScriptedGrid({2: arrays(0.1), 4: arrays(0.1)}), first, 0.8,
                  noisy_cohorts(recovered))  # fmt: skip
    with pytest.raises(TooFewRepliesError, match="2 of 2 round-retries used"):
        retried_round(ScriptedGrid({2: None}, {2: None}), first, 0.8, noisy_cohorts(exhausted))

    # Assert: one release for the recovered round, none for the stopped one
    assert recovered == [4]
    assert exhausted == []


def test_a_short_round_asks_its_failed_clients_again_then_aggregates_once() -> None:
    # Prepare: 4 of 5 needed; node 3 errs, 4 and 5 say nothing; the retry brings 3 and 4
    grid = ScriptedGrid({3: arrays(1.0), 4: arrays(1.0), 5: None})
    first = [reply(1, arrays(1.0)), reply(2, arrays(1.0)), reply(3)]

    # Execute
    inner, seen, (aggregated, _) = retried_round(grid, first, min_replies=0.8)

    # Assert: one retry to the failed nodes, marked attempt 2, then one aggregation of 4
    (retry,) = grid.sent
    assert sorted(m.metadata.dst_node_id for m in retry) == [3, 4, 5]
    config = retry[0].content.config_records["config"]
    assert (config[ROUND_ATTEMPT], config["server-round"], config["lr"]) == (2, 4, 0.1)
    assert inner.aggregated == [4]
    assert aggregated is not None and np.allclose(aggregated["w"].numpy(), 1.0)
    (faults,) = seen
    assert (faults.asked, faults.valid, faults.attempts, faults.degraded) == (5, 4, 2, True)
    assert sorted(faults.failures) == [(3, "boom"), (4, "no reply within the round timeout"),
                                       (5, "no reply within the round timeout"),
                                       (5, "retry 1: boom")]  # fmt: skip


def test_exhausted_retries_stop_the_run_before_anything_is_aggregated() -> None:
    # Prepare: every retry fails again (with dp = "user" nothing may be released)
    grid = ScriptedGrid({2: None, 3: None, 4: None, 5: None}, {2: None, 3: None})

    # Execute
    with pytest.raises(TooFewRepliesError) as raised:
        retried_round(grid, [reply(1, arrays()), reply(2), reply(3), reply(4), reply(5)], 0.5)

    # Assert: attempts 2 and 3 went out to the nodes that failed before; no aggregate
    assert [sorted(m.metadata.dst_node_id for m in batch) for batch in grid.sent] == [
        [2, 3, 4, 5], [2, 3, 4, 5]]  # fmt: skip
    assert [batch[0].content.config_records["config"][ROUND_ATTEMPT] for batch in grid.sent] == [
        2, 3]  # fmt: skip
    assert str(raised.value).startswith(
        "round 4: 1 valid replies of 5 clients asked, min-replies 0.5 needs 3 "
        "(12 failed, 0 rejected, 2 of 2 round-retries used: node 2: boom"
    )


def test_rejected_updates_are_not_asked_again_and_a_full_round_is_not_retried() -> None:
    # Prepare: 4 of 5 needed; nodes 2 and 3 send NaN, 4 is silent, 5 errs
    retried = ScriptedGrid({4: arrays(), 5: arrays()})
    first = [reply(1, arrays()), reply(2, arrays(np.nan)), reply(3, arrays(np.nan)), reply(5)]
    untouched = ScriptedGrid()

    # Execute
    with pytest.raises(TooFewRepliesError, match="2 failed, 2 rejected, 1 of 2 round-retries"):
        retried_round(retried, first, min_replies=0.8)
    inner, seen, _ = retried_round(untouched, first[:3], min_replies=1.0)

    # Assert: only the failed nodes were asked again, and nothing more once both replied
    assert [sorted(m.metadata.dst_node_id for m in batch) for batch in retried.sent] == [[4, 5]]
    assert untouched.sent == [] and inner.aggregated == [1] and seen[0].attempts == 1


def test_a_dead_worker_stops_the_run_naming_it() -> None:
    strategy, _ = screening()
    dead = reply(4)
    dead.error.__dict__["_reason"] = (
        "<class 'ray.exceptions.ActorDiedError'>:<'The actor died.\n x'>"
    )

    with pytest.raises(WorkerDiedError, match=r"round 3: .*node 4's ClientApp died "
                       r"\(ActorDiedError: The actor died.\)"):  # fmt: skip
        strategy.aggregate_train(3, [reply(1, arrays()), dead])


def test_without_validation_hostile_updates_reach_the_strategy() -> None:
    strategy, seen = screening(validate=False)

    aggregated, _ = strategy.aggregate_train(1, [reply(1, arrays(1.0)), reply(2, arrays(np.inf))])

    assert aggregated is not None and np.isinf(aggregated["w"].numpy()).all()
    assert seen[0].rejections == [] and seen[0].failures[0][0] == 3


def aggregated_bytes(strategy: Strategy, replies: list[Message]) -> bytes:
    """The bytes of every array a strategy aggregates ``replies`` into."""
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    return b"".join(array.numpy().tobytes() for array in aggregated.values())


def test_the_aggregate_is_the_same_whatever_order_the_replies_arrive_in() -> None:
    rng = np.random.default_rng(0)
    values = [{"w": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)} for _ in range(5)]
    replies = [
        reply(node, ArrayRecord({k: Array(v.astype(np.float32)) for k, v in value.items()}),
              weight=float(node))
        for node, value in enumerate(values, start=1)
    ]  # fmt: skip
    arrivals = [[replies[i] for i in rng.permutation(5)] for _ in range(8)]

    plain = {aggregated_bytes(FedAvg(), order) for order in arrivals}
    screened = {aggregated_bytes(screening()[0], order) for order in arrivals}

    assert len(plain) > 1  # float32 sums in arrival order differ in the last bits
    assert len(screened) == 1


def test_canonical_order_sorts_by_content_and_puts_error_replies_last() -> None:
    one, two, failed = reply(1, arrays(1.0)), reply(2, arrays(2.0)), reply(3)

    first = canonical_order([failed, two, one])
    second = canonical_order([one, failed, two])

    assert [r.metadata.src_node_id for r in first] == [r.metadata.src_node_id for r in second]
    assert first[-1] is failed and second[-1] is failed


@pytest.mark.parametrize(
    ("min_replies", "asked", "needed"),
    [
        (1.0, 10, 1),
        (0.5, 10, 5),
        (0.3, 7, 3),
        (0.01, 10, 1),
        (4.0, 10, 4),
        (12.0, 10, 10),
        (0.5, 0, 0),
    ],
)
def test_min_replies_is_a_share_rounded_up_or_a_count(
    min_replies: float, asked: int, needed: int
) -> None:
    assert required_replies(min_replies, asked) == needed


def test_fault_log_totals_and_rejections_csv(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = FaultLog(tmp_path)
    log.record(RoundFaults(1, 5, 3, [(4, "boom")], [(3, "'w' has non-finite values")]))
    log.record(RoundFaults(2, 5, 5))

    assert log.summary() == {"degraded_rounds": 1, "client_failures": 1, "rejected_updates": 1}
    assert (tmp_path / "rejections.csv").read_text().splitlines() == [
        "round,node_id,kind,reason",
        "1,4,failed,boom",
        "1,3,rejected,'w' has non-finite values",
    ]


def test_the_launcher_never_says_a_plain_done_for_a_degraded_run() -> None:
    clean = {"rounds": 60, "degraded_rounds": 0, "client_failures": 0, "rejected_updates": 0}
    degraded = {**clean, "degraded_rounds": 12, "client_failures": 41}

    assert outcome_word(clean) == "done"
    assert outcome_word(degraded) == (
        "done (degraded: 12 of 60 rounds, 41 client failures, 0 updates rejected)"
    )


def test_short_reason_keeps_the_message_flower_wraps() -> None:
    wrapped = (
        "<class 'ray.exceptions.RayTaskError'>:<'\x1b[36mray::X\x1b[39m\n  File\n"
        "Message: injected fault'>"
    )

    assert short_reason(wrapped) == "injected fault"


# robust strategies and the config


@pytest.mark.parametrize(
    ("name", "kind"),
    [("fedmedian", FedMedian), ("fedtrimmedavg", FedTrimmedAvg), ("krum", Krum),
     ("multikrum", MultiKrum), ("bulyan", Bulyan)],
)  # fmt: skip
def test_robust_strategies_are_flowers_own(name: str, kind: type) -> None:
    config = FederatedConfig(strategy=name, byzantine_clients=1, krum_select=3, trimmed_beta=0.1)

    strategy = build_strategy(config, num_partitions=10)

    assert type(strategy) is kind
    if name in ("krum", "multikrum", "bulyan"):
        assert strategy.num_malicious_nodes == 1  # type: ignore[attr-defined]
    if name == "multikrum":
        assert strategy.num_nodes_to_select == 3  # type: ignore[attr-defined]
    if name == "fedtrimmedavg":
        assert strategy.beta == 0.1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "fedmedian", "partition_mode": "cohort"}, "one noisy sum"),
        ({"strategy": "krum", "partition_mode": "cohort", "dp": "user", "noise_multiplier": 1.0},
         "use partition-mode cross-device or cross-silo"),
        ({"fault_rate": 1.0}, "fault-rate must be in [0, 1)"),
        ({"fault_kind": "melt"}, "fault-kind must be one of crash, hang, error, nan, scale"),
        ({"fault_rate": 0.1, "deployment_nodes": 2, "catalogue": "c", "population": 5},
         "fault-rate is a simulation setting"),
        ({"fault_rate": 0.1, "fault_kind": "nan", "update_compression": "int8"},
         "not with update-compression"),
        ({"min_replies": 0.0}, "min-replies must be a share in (0, 1)"),
        ({"min_replies": 2.5}, "or a whole count >= 1, got 2.5"),
        ({"round_timeout": 0.0}, "round-timeout must be a positive number"),
        ({"round_retries": -1}, "round-retries must be in [0, 100], got -1"),
        ({"max_update_norm": -1.0}, "max-update-norm must be >= 0"),
        ({"trimmed_beta": 0.5}, "trimmed-beta must be in [0, 0.5)"),
        ({"krum_select": 0}, "krum-select >= 1"),
    ],
)  # fmt: skip
def test_bad_failure_settings_are_one_clear_error(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as error:
        FederatedConfig(**settings)  # type: ignore[arg-type]

    assert message in str(error.value)
