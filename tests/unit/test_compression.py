"""Compressed client updates: round-trip error bounds, sizes, and aggregation after decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.federation.compression import (
    INT8_LEVELS,
    SCALE_SUFFIX,
    decode_update,
    dequantize_int8,
    encode_update,
    quantize_int8,
)
from common.federation.messages import model_to_arrays
from common.models import ModelConfig, build_model
from server.fault_tolerance import FaultLog, ReplyScreening
from server.update_decoding import decode_replies


def global_and_local(
    seed: int = 0, step: float = 1e-2, n_items: int = 40
) -> tuple[ArrayRecord, ArrayRecord]:
    """An attention model's arrays and a copy moved by a small random update."""
    torch.manual_seed(seed)
    config = ModelConfig(name="attention", dim=16, layers=1, max_len=8)
    reference = model_to_arrays(build_model(config, n_items=n_items))
    return reference, moved(reference, seed, step)


def moved(reference: ArrayRecord, seed: int, step: float = 1e-2) -> ArrayRecord:
    """``reference`` plus a seeded Gaussian update of scale ``step``."""
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            name: Array((a.numpy() + step * rng.standard_normal(a.shape)).astype(np.float32))
            for name, a in reference.items()
        }
    )


def max_error(decoded: ArrayRecord, local: ArrayRecord) -> dict[str, float]:
    return {
        name: float(np.abs(decoded[name].numpy() - local[name].numpy()).max()) for name in local
    }


def test_none_sends_the_weights_unchanged() -> None:
    reference, local = global_and_local()
    assert encode_update(local, reference, "none") is local
    assert decode_update(local, reference, "none") is local


def test_float16_round_trip_error_is_half_precision_of_the_update() -> None:
    reference, local = global_and_local()

    decoded = decode_update(encode_update(local, reference, "float16"), reference, "float16")

    for name in local:
        update = local[name].numpy() - reference[name].numpy()
        bound = np.abs(update) * 2.0**-11 + 1e-7  # rounding to 11 significant bits
        assert (np.abs(decoded[name].numpy() - local[name].numpy()) <= bound).all(), name
        assert decoded[name].numpy().dtype == np.float32


def test_int8_round_trip_error_is_at_most_half_a_step_per_row() -> None:
    reference, local = global_and_local()
    encoded = encode_update(local, reference, "int8")

    decoded = decode_update(encoded, reference, "int8")

    for name in local:
        update = local[name].numpy() - reference[name].numpy()
        rows = update.reshape(update.shape[0], -1) if update.ndim > 1 else update.reshape(1, -1)
        step = np.abs(rows).max(axis=1) / INT8_LEVELS
        error = np.abs(decoded[name].numpy() - local[name].numpy())
        error_rows = error.reshape(rows.shape)
        assert (error_rows <= step[:, None] / 2 + 1e-6).all(), name
        assert encoded[name].numpy().dtype == np.int8
        assert encoded[name + SCALE_SUFFIX].numpy().shape == (rows.shape[0],)


def test_int8_beats_quantizing_the_weights_themselves() -> None:
    reference, local = global_and_local(step=1e-3)
    decoded = decode_update(encode_update(local, reference, "int8"), reference, "int8")
    zero = ArrayRecord({n: Array(np.zeros_like(a.numpy())) for n, a in reference.items()})
    weights_quantized = decode_update(encode_update(local, zero, "int8"), zero, "int8")

    update_error = max(max_error(decoded, local).values())
    weight_error = max(max_error(weights_quantized, local).values())

    assert update_error < weight_error / 20


def test_compressed_replies_are_smaller() -> None:
    reference, local = global_and_local(n_items=2000)  # array headers are a small share
    sizes = {
        m: encode_update(local, reference, m).count_bytes() for m in ("none", "float16", "int8")
    }
    values = sum(a.numpy().size for a in local.values())

    assert sizes["none"] > 4 * values
    assert 2 * values < sizes["float16"] < 0.55 * sizes["none"]
    assert values < sizes["int8"] < 0.35 * sizes["none"]


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_int8_quantization_error_bound_holds_for_any_matrix(values: np.ndarray) -> None:
    codes, scales = quantize_int8(values)

    restored = dequantize_int8(codes, scales)

    bound = np.abs(values).max(axis=1, keepdims=True) / INT8_LEVELS / 2
    assert (np.abs(restored - values) <= bound * (1 + 1e-5) + 1e-30).all()


def test_an_all_zero_update_survives_int8() -> None:
    codes, scales = quantize_int8(np.zeros((3, 4), dtype=np.float32))
    assert (scales == 0).all()
    assert (dequantize_int8(codes, scales) == 0).all()


def test_decode_refuses_a_reply_that_does_not_fit() -> None:
    reference, local = global_and_local()
    encoded = encode_update(local, reference, "int8")
    with pytest.raises(ValueError, match=r"a float16 update does not match the global model"):
        decode_update(encoded, reference, "float16")
    half = encode_update(local, reference, "float16")
    name = next(iter(half))
    half[name] = Array(half[name].numpy().astype(np.float32))
    with pytest.raises(ValueError, match=rf"{name}: expected a float16 update of shape"):
        decode_update(half, reference, "float16")
    with pytest.raises(ValueError, match="update-compression must be one of"):
        encode_update(local, reference, "int4")


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's task identity, as Flower's ServerApp runtime sets it before a run."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def reply(arrays: ArrayRecord, examples: int, node: int) -> Message:
    """A real Flower reply to a real train instruction."""
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, reply_to=instruction)


@pytest.mark.parametrize(("method", "relative_step"), [("float16", 2.0**-11), ("int8", 1 / 254)])
@pytest.mark.usefixtures("server_task")
def test_fedavg_of_decoded_replies_matches_plain_fedavg(method: str, relative_step: float) -> None:
    reference, _ = global_and_local()
    clients = [moved(reference, seed) for seed in (1, 2, 3)]
    examples = [10, 30, 60]
    plain, _ = FedAvg().aggregate_train(
        1, [reply(c, n, i) for i, (c, n) in enumerate(zip(clients, examples, strict=True))]
    )
    encoded = [
        reply(encode_update(c, reference, method), n, i)
        for i, (c, n) in enumerate(zip(clients, examples, strict=True))
    ]

    decoded, _ = FedAvg().aggregate_train(1, decode_replies(encoded, reference, method))

    assert plain is not None and decoded is not None
    for name in plain:
        # a weighted mean of errors is at most the largest: max |update| times the step
        largest = max(np.abs(c[name].numpy() - reference[name].numpy()).max() for c in clients)
        tolerance = largest * relative_step + 1e-6  # + float32 rounding of the weights
        error = np.abs(decoded[name].numpy() - plain[name].numpy()).max()
        assert error <= tolerance, name
        assert error > 0, name  # the update really went through the narrow format


def corrupted(method: str, reference: ArrayRecord, local: ArrayRecord) -> dict[str, ArrayRecord]:
    """What hostile clients send with ``method``: a NaN update and a 100x update, encoded."""
    name = next(iter(reference))
    nan = encode_update(local, reference, method)
    if method == "float16":
        nan[name] = Array(np.full(reference[name].numpy().shape, np.nan, np.float16))
    else:  # a NaN scale turns the whole row NaN once decoded
        nan[name + SCALE_SUFFIX] = Array(np.full_like(nan[name + SCALE_SUFFIX].numpy(), np.nan))
    scaled = ArrayRecord({k: Array(reference[k].numpy() + 100 * (local[k].numpy() -
                          reference[k].numpy())) for k in reference})  # fmt: skip
    return {"nan": nan, "scaled": encode_update(scaled, reference, method)}


@pytest.mark.parametrize("method", ["float16", "int8"])
@pytest.mark.usefixtures("server_task")
def test_compressed_hostile_updates_are_decoded_then_rejected_with_their_reason(
    method: str, tmp_path: Path
) -> None:
    # Prepare: one honest client, one NaN, one 100x, one that does not decode
    reference, honest = global_and_local(step=1e-3)
    norm = float(np.sqrt(sum(np.square(honest[k].numpy() - reference[k].numpy()).sum()
                             for k in reference)))  # fmt: skip
    hostile = corrupted(method, reference, honest)
    undecodable = encode_update(honest, reference, "int8" if method == "float16" else "float16")
    replies = [reply(encode_update(honest, reference, method), 10, 1),
               reply(hostile["nan"], 10, 2), reply(hostile["scaled"], 10, 3),
               reply(undecodable, 10, 4)]  # fmt: skip
    log = FaultLog(tmp_path)
    screening = ReplyScreening(FedAvg(), min_replies=1.0, on_round=log.record,
                               max_update_norm=10 * norm, compression=method)  # fmt: skip
    list(screening.configure_train(1, reference, ConfigRecord(), FixedNodes()))  # type: ignore[arg-type]

    # Execute
    aggregated, _ = screening.aggregate_train(1, replies)

    # Assert: only the honest update went through, decoded; each rejection has its reason
    assert aggregated is not None
    for name in reference:
        step = np.abs(honest[name].numpy() - reference[name].numpy()).max()
        assert np.abs(aggregated[name].numpy() - honest[name].numpy()).max() <= step / 100 + 1e-6
    lines = (tmp_path / "rejections.csv").read_text().splitlines()[1:]
    rows = {line.split(",")[1]: line for line in lines}
    assert "has non-finite values" in rows["2"] and ",rejected," in rows["2"]
    assert f"exceeds max-update-norm {10 * norm:g}" in rows["3"]
    assert "update cannot be decoded" in rows["4"]
    assert log.summary() == {"degraded_rounds": 1, "client_failures": 0, "rejected_updates": 3}


class FixedNodes:
    """The part of a grid FedAvg's ``configure_train`` uses: nodes 1..4."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]
