"""``fedseqrec-audit RUN --receipts``: each disagreement between ledger and receipts, by name.

The run folder is written by the real server code (:func:`tests.helpers.user_dp_run`: 4
rounds of user-level DP, noise multiplier 1, clip norm 1, sampling rate 0.5, 20 users),
its ledger then signed with the server's ledger key. Two nodes hold the receipts an
honest server's messages would have left: training rounds 1-4 and the evaluation of the
released model. Each case changes what one node was told or sent, as a dishonest server
would, and the node signs it as received.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.receipts import receipt_of
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
    SERVER_ROUND,
)
from common.privacy.node_receipts import Receipt, append_receipt
from common.privacy.receipts import released_model_sha256
from common.privacy.report import main
from common.privacy.signing import Signer, ledger_signing, signatures_path
from deploy.certificates import DeploymentCredentials, create_credentials
from tests.helpers import forge_noise_consistently, user_dp_run, write_cycle_log

NODE_IDS = (101, 202)
Edit = Callable[[int, list[Receipt]], list[Receipt]]  # (node index, honest receipts) -> sent


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower's runtime sets before messages are built."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCredentials:
    return create_credentials(tmp_path_factory.mktemp("keys"), nodes=2)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, keys: DeploymentCredentials) -> Path:
    """The honest run folder, its ledger signed by the server's ledger key."""
    root = tmp_path_factory.mktemp("honest")
    run = user_dp_run(root / "run-a", write_cycle_log(root / "cycle.csv"))
    ledger = run / "ledger" / "server.jsonl"
    sign = ledger_signing(ledger, Signer.from_file(keys.ledger_key))
    for line in ledger.read_bytes().splitlines():
        sign(line)
    return run


def honest_receipts(run: Path, keys: DeploymentCredentials, node_id: int) -> list[Receipt]:
    """What the honest server's messages leave on a node: rounds 1-4, then the evaluation."""
    _, digest = released_model_sha256(run / "checkpoint.pt")  # the model never moved
    announced = {
        LEDGER_RUN_ID: run.name, POPULATION_KEY: 20, DP_MECHANISM: "dp-fedavg",
        DP_NOISE_MULTIPLIER: 1.0, DP_CLIP_NORM: 1.0, DP_SAMPLING_RATE: 0.5,
        LEDGER_PUBLIC_KEY: Signer.from_file(keys.ledger_key).public_text,
    }  # fmt: skip
    receipts = []
    for kind, server_round in [*(("train", r) for r in range(1, 5)), ("evaluate", 4)]:
        content = RecordDict({ARRAYS: ArrayRecord(), CONFIG: ConfigRecord(
            {SERVER_ROUND: server_round, **announced})})  # type: ignore[dict-item]  # fmt: skip
        receipt = receipt_of(Message(content, dst_node_id=node_id, message_type=kind), node_id)
        receipts.append(dataclasses.replace(receipt, model_sha256=digest))
    return receipts


def audit(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, edit: Edit | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:  # fmt: skip
    """Copy the run, write both nodes' (edited) receipts, run the audit: code and output."""
    run = tmp_path / honest.name
    shutil.copytree(honest, run)
    folders = []
    for index, node_id in enumerate(NODE_IDS):
        folder = tmp_path / f"node-{index + 1}"
        receipts = honest_receipts(run, keys, node_id)
        signer = Signer.from_file(keys.node_private_keys[index])
        for receipt in edit(index, receipts) if edit else receipts:
            append_receipt(folder, receipt, signer)
        folders.append(str(folder))
    code = main([str(run), "--receipts", *folders, *extra])
    return code, run.name


def in_round(server_round: int, kind: str = "train", node: int = 0, **fields: object) -> Edit:
    """Node ``node`` was told (or sent) something else in one message."""

    def edit(index: int, receipts: list[Receipt]) -> list[Receipt]:
        return [
            dataclasses.replace(r, **fields)  # type: ignore[arg-type]
            if index == node and (r.message, r.round) == (kind, server_round)
            else r
            for r in receipts
        ]

    return edit


def extra_message(kind: str, server_round: int) -> Edit:
    def edit(index: int, receipts: list[Receipt]) -> list[Receipt]:
        model_round = server_round - 1 if kind == "train" else server_round
        added = dataclasses.replace(receipts[0], message=kind, round=server_round,
                                    model_round=model_round)  # fmt: skip
        return [*receipts, added] if index == 0 else receipts

    return edit


CASES: dict[str, tuple[Edit, str]] = {
    "noise multiplier": (
        in_round(2, noise_multiplier=0.5),
        "node-1 (node 101), round 2: noise_multiplier is 1.0 in the ledger but 0.5 in the "
        "node's receipt",
    ),
    "clip norm": (in_round(3, clip_norm=4.0), "round 3: clip_norm is 1.0 in the ledger but 4.0"),
    "sampling rate": (
        in_round(1, node=1, sampling_rate=0.9),
        "node-2 (node 202), round 1: sampling_rate is 0.5 in the ledger but 0.9",
    ),
    "population": (in_round(4, population=943), "population is 20 in the ledger but 943"),
    "no noise announced": (
        in_round(2, mechanism="none", noise_multiplier=None),
        "round 2: mechanism is dp-fedavg in the ledger but none in the node's receipt",
    ),
    "a round the ledger lacks": (
        extra_message("train", 5),
        "node-1 (node 101), round 5: the node was sent this round for training under "
        "dp-fedavg, but the ledger has no entry for it",
    ),
    "a release the ledger lacks": (
        extra_message("evaluate", 6),
        "node-1 (node 101) received the model of round 6 (in the evaluate message of round "
        "6), but the ledger has no entry for round 6",
    ),
    "another released model": (
        in_round(4, "evaluate", model_sha256="ab" * 32),
        "node-1 (node 101) received the model of round 4 with hash abababababab, but the "
        "released checkpoint.pt's arrays hash to",
    ),
    "different models for one round": (
        in_round(3, node=1, model_sha256="cd" * 32),
        "round 2: the nodes received different models as its release (",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_disagreement_fails_the_audit_naming_it(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], name: str,
) -> None:  # fmt: skip
    # Prepare
    edit, message = CASES[name]
    # Execute
    code, _ = audit(honest, keys, tmp_path, edit)
    out = capsys.readouterr().out
    # Assert
    assert code == 1, out
    assert message in out


def test_a_ledger_key_announced_to_one_node_only_fails(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Signer.from_file(keys.node_private_keys[0])

    code, _ = audit(honest, keys, tmp_path, in_round(2, node=1, server_key=other.public_text))
    out = capsys.readouterr().out

    assert code == 1
    assert "the nodes were announced different ledger keys (" in out
    assert other.fingerprint in out


def test_the_honest_run_passes_with_its_receipts(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, run_id = audit(honest, keys, tmp_path)
    out = capsys.readouterr().out

    assert code == 0, out
    assert f"receipts: 10 signed receipt(s) of run '{run_id}' from 2 node(s)" in out
    assert "server.jsonl: all 4 entries of this run are signed by the ledger key" in out
    assert "PASSED" in out


def test_a_consistent_forgery_by_the_key_holder_fails_on_the_receipts(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def forge(index: int, receipts: list[Receipt]) -> list[Receipt]:
        if index == 0:  # once: the run folder is shared
            forge_noise_consistently(tmp_path / honest.name, 2.0, Signer.from_file(keys.ledger_key))
        return receipts

    code, _ = audit(honest, keys, tmp_path, forge)
    out = capsys.readouterr().out

    assert code == 1
    for server_round in range(1, 5):
        assert (
            f"node-2 (node 202), round {server_round}: noise_multiplier is 2.0 in the ledger "
            f"but 1.0 in the node's receipt"
        ) in out
    assert "signature" not in out.split("FAILED")[1]  # the key holder signed its forgery


def test_a_ledger_edited_without_the_key_fails_its_signatures(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def forge(index: int, receipts: list[Receipt]) -> list[Receipt]:
        if index == 0:
            forge_noise_consistently(tmp_path / honest.name, 1.0)  # unsigned, same values
            sign = ledger_signing(tmp_path / honest.name / "ledger" / "server.jsonl",
                                  Signer.from_file(keys.node_private_keys[0]))  # fmt: skip
            ledger = tmp_path / honest.name / "ledger" / "server.jsonl"
            sign(ledger.read_bytes().splitlines()[0])
        return receipts

    code, _ = audit(honest, keys, tmp_path, forge)
    out = capsys.readouterr().out

    assert code == 1
    assert "server.jsonl, line 1: its signature does not verify with the ledger key" in out
    assert "server.jsonl, line 2 is not signed by the ledger key (SHA256:" in out


def test_receipts_of_another_run_vouch_for_nothing(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def other_run(index: int, receipts: list[Receipt]) -> list[Receipt]:
        return [dataclasses.replace(r, run_id="run-b") for r in receipts]

    code, run_id = audit(honest, keys, tmp_path, other_run)

    assert code == 1
    assert f"no node folder holds a verified receipt of run '{run_id}'" in capsys.readouterr().out


def test_registered_keys_check_who_signed(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    swapped = [str(keys.node_public_keys[1]), str(keys.node_public_keys[0])]

    code, _ = audit(honest, keys, tmp_path, extra=("--node-keys", *swapped))
    out = capsys.readouterr().out

    node_1 = Signer.from_file(keys.node_private_keys[0]).fingerprint
    assert code == 1
    assert f"node-1: receipts.jsonl, line 1 is signed by key {node_1}, not the node's" in out


def test_node_keys_must_match_the_folders(
    honest: Path, keys: DeploymentCredentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = audit(honest, keys, tmp_path, extra=("--node-keys", str(keys.node_public_keys[0])))

    assert code == 2
    assert "--node-keys: 1 key(s) for 2 node folder(s)" in capsys.readouterr().err


def test_the_model_hash_is_the_arrays_the_server_sends(honest: Path) -> None:
    from common.federation.checkpoints import load_checkpoint
    from common.federation.messages import model_to_arrays
    from common.privacy.node_receipts import arrays_sha256

    sent = model_to_arrays(load_checkpoint(honest / "checkpoint.pt").build_model())
    as_received = ArrayRecord({name: Array(np.array(sent[name].numpy())) for name in sent})

    model_round, digest = released_model_sha256(honest / "checkpoint.pt")

    assert model_round == 4
    assert digest == arrays_sha256({name: as_received[name].numpy() for name in as_received})
    assert json.loads((honest / "summary.json").read_text())["released_round"] == 4
    assert signatures_path(honest / "ledger" / "server.jsonl").is_file()
