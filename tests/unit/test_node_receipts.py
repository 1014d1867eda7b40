"""A node's receipts: what they bind, how they are signed, and that an edited one fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.receipts import keep_receipt, receipt_of
from common.federation.messages import (
    ARRAYS,
    CONFIG,
    DP_CLIP_NORM,
    DP_MECHANISM,
    DP_NOISE_MULTIPLIER,
    DP_SAMPLING_RATE,
    LEDGER_PUBLIC_KEY,
    LEDGER_RUN_ID,
    POPULATION_KEY,
    ROUND_OFFSET,
    SERVER_ROUND,
)
from common.privacy.node_receipts import (
    RECEIPTS_FILE,
    RECEIPTS_KEY_FILE,
    Receipt,
    ReceiptError,
    append_receipt,
    arrays_sha256,
    read_receipts,
)
from common.privacy.receipts import ReceiptAudit, _verified_receipts
from common.privacy.signing import Signer, load_public_key, verifies
from deploy.certificates import DeploymentCredentials, create_credentials


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower's runtime sets before messages are built."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCredentials:
    return create_credentials(tmp_path_factory.mktemp("keys"), nodes=2)


def message(kind: str, server_round: int, offset: int = 0, **announced: Any) -> Message:
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    settings = ConfigRecord(
        {SERVER_ROUND: server_round, ROUND_OFFSET: offset, LEDGER_RUN_ID: "run-a",
         POPULATION_KEY: 20, **announced}  # type: ignore[dict-item]
    )  # fmt: skip
    content = RecordDict({ARRAYS: arrays, CONFIG: settings})
    return Message(content=content, dst_node_id=7, message_type=kind)


def verified(folder: Path, key: Path) -> tuple[int, list[str]]:
    """How many receipts of run-a verify with ``key``, and the failures."""
    audit = ReceiptAudit()
    found = _verified_receipts(folder, key, "run-a", audit)
    return len(found), audit.failures


def test_a_training_receipt_binds_the_announcement_and_the_previous_round_model(
    keys: DeploymentCredentials,
) -> None:
    signer = Signer.from_file(keys.ledger_key)
    msg = message(
        "train", 3, offset=10, **{DP_MECHANISM: "dp-fedavg", DP_NOISE_MULTIPLIER: 1.5,
        DP_CLIP_NORM: 0.5, DP_SAMPLING_RATE: 0.25, LEDGER_PUBLIC_KEY: signer.public_text},
    )  # fmt: skip

    receipt = receipt_of(msg, 7)

    assert (receipt.run_id, receipt.node_id, receipt.message) == ("run-a", 7, "train")
    assert (receipt.round, receipt.model_round) == (13, 12)  # arrays: the release of round 12
    assert (receipt.mechanism, receipt.noise_multiplier, receipt.clip_norm) == (
        "dp-fedavg", 1.5, 0.5)  # fmt: skip
    assert (receipt.sampling_rate, receipt.population) == (0.25, 20)
    assert receipt.server_key == signer.public_text
    assert receipt.model_sha256 == arrays_sha256(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    )


def test_an_evaluation_receipt_binds_the_model_after_its_round() -> None:
    receipt = receipt_of(message("evaluate", 4), 7)

    assert (receipt.message, receipt.round, receipt.model_round) == ("evaluate", 4, 4)
    assert (receipt.mechanism, receipt.noise_multiplier, receipt.server_key) == ("none", None, None)


def test_the_model_hash_sees_names_shapes_dtypes_and_values() -> None:
    base = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    variants: list[dict[str, np.ndarray]] = [
        {"a": np.zeros((3, 2), np.float32), "b": base["b"]},
        {"a": np.zeros((2, 3), np.float64), "b": base["b"]},
        {"a": base["a"], "c": base["b"]},
        {"a": base["a"], "b": np.array([1, 1, 1, 1.0000001], np.float32)},
    ]

    digests = {arrays_sha256(v) for v in variants}

    assert arrays_sha256(dict(reversed(base.items()))) == arrays_sha256(base)  # order-free
    assert len(digests) == 4 and arrays_sha256(base) not in digests


def test_receipts_are_chained_signed_and_verify_with_the_node_key(
    keys: DeploymentCredentials, tmp_path: Path
) -> None:
    signer = Signer.from_file(keys.node_private_keys[0])
    for server_round in (1, 2):
        append_receipt(tmp_path, receipt_of(message("train", server_round), 7), signer)

    read = read_receipts(tmp_path / RECEIPTS_FILE)

    assert [r.round for r in read.receipts] == [1, 2]
    assert read.receipts[1].prev_hash == read.hashes[0]
    assert read.receipts[0].key == signer.fingerprint
    public = load_public_key(keys.node_public_keys[0])
    assert all(verifies(public, r.payload(), r.signature) for r in read.receipts)
    assert (tmp_path / RECEIPTS_KEY_FILE).read_text().split()[:2] == (
        keys.node_public_keys[0].read_text().split()[:2]
    )
    assert verified(tmp_path, keys.node_public_keys[0]) == (2, [])


def test_an_edited_receipt_fails_its_signature(keys: DeploymentCredentials, tmp_path: Path) -> None:
    signer = Signer.from_file(keys.node_private_keys[0])
    announced: dict[str, Any] = {DP_MECHANISM: "dp-fedavg", DP_NOISE_MULTIPLIER: 1.0}
    append_receipt(tmp_path, receipt_of(message("train", 1, **announced), 7), signer)
    path = tmp_path / RECEIPTS_FILE
    record = json.loads(path.read_text())
    record["noise_multiplier"] = 2.0  # the server's story, written into the node's file
    path.write_text(json.dumps(record) + "\n")

    count, failures = verified(tmp_path, keys.node_public_keys[0])

    assert count == 0
    assert failures == [
        f"{tmp_path.name}: receipts.jsonl, line 1: the signature does not verify with the "
        f"node's key ({signer.fingerprint}): the receipt was forged or edited"
    ]


def test_a_receipt_forged_with_another_key_fails(
    keys: DeploymentCredentials, tmp_path: Path
) -> None:
    node = Signer.from_file(keys.node_private_keys[0])
    forger = Signer.from_file(keys.ledger_key)  # the server's own key
    append_receipt(tmp_path, receipt_of(message("train", 1), 7), forger)
    path = tmp_path / RECEIPTS_FILE
    as_node = json.loads(path.read_text())
    as_node["key"] = node.fingerprint  # claims the node's key, signed by the server's
    path.write_text(path.read_text() + json.dumps(as_node) + "\n")

    count, failures = verified(tmp_path, keys.node_public_keys[0])

    assert count == 0
    assert failures[0] == (
        f"{tmp_path.name}: receipts.jsonl, line 1 is signed by key {forger.fingerprint}, "
        f"not the node's ({node.fingerprint})"
    )
    assert "line 2 does not chain to the receipt before it" in failures[1]
    assert "line 2: the signature does not verify" in failures[2]


def test_a_malformed_receipt_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / RECEIPTS_FILE
    fields = Receipt("run-a", 7, "train", 1, 0, "0" * 64).to_json()
    path.write_text(fields + "\n" + fields.replace('"round": 1', '"round": "one"') + "\n")

    with pytest.raises(ReceiptError, match=r"receipts.jsonl, line 2: field 'round' must be an"):
        read_receipts(path)


def test_an_edge_node_keeps_receipts_only_with_a_receipt_key(
    keys: DeploymentCredentials, tmp_path: Path
) -> None:
    data = tmp_path / "clicks.csv"
    data.write_text("user,item,timestamp\n")
    msg = message("train", 1)
    unsigned = Context(0, 7, {"data-path": str(data)}, RecordDict(), {})
    signed = Context(0, 7, {"data-path": str(data), "receipt-key": str(keys.node_private_keys[1])},
                     RecordDict(), {})  # fmt: skip

    keep_receipt(msg, unsigned)
    kept_without_key = (tmp_path / RECEIPTS_FILE).exists()
    keep_receipt(msg, signed)

    assert not kept_without_key
    assert verified(tmp_path, keys.node_public_keys[1]) == (1, [])
