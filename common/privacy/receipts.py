"""``fedseqrec-audit RUN --receipts NODE ...``: the server's ledger against the nodes' receipts.

The ledger is the server's own account; the receipts (:mod:`common.privacy.node_receipts`)
are the nodes'. For each node folder the audit verifies every receipt's signature with
the node's public key (``--node-keys``, the keys registered at the SuperLink, in the
order of the folders; else ``receipts.pub`` in each folder) and the receipts' hash
chain, then checks the run's ledger against the receipts of this run. Each disagreement
is one sentence:

- a field of a round's ledger entry that differs from what the server announced to the
  node for that round (mechanism, noise multiplier, clip norm, sampling rate,
  population);
- a round the node was sent for training under server-side DP that the ledger lacks, or
  a model the node received as the release of a round the ledger lacks;
- nodes that received different models as the same round's release, or a model whose
  hash differs from the released checkpoint's arrays;
- a ledger entry of this run without a valid signature by the ledger key the nodes were
  announced (``<ledger>.sig``, :mod:`common.privacy.signing`).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.privacy.ledger import LedgerEntry, read_ledger_file
from common.privacy.ledger_audit import SERVER, AuditReport
from common.privacy.ledger_heads import LEDGER_FOLDER, SERVER_LEDGER, read_json_object
from common.privacy.node_receipts import (
    NO_MECHANISM,
    RECEIPTS_FILE,
    RECEIPTS_KEY_FILE,
    Receipt,
    ReceiptError,
    arrays_sha256,
    read_receipts,
)
from common.privacy.signing import (
    LEDGER_DOMAIN,
    SignatureError,
    fingerprint,
    load_public_key,
    public_key_from_text,
    read_ledger_signatures,
    verifies,
)
from common.storage.chained_log import GENESIS

COMPARED = ("mechanism", "noise_multiplier", "clip_norm", "sampling_rate", "population")
SERVER_MECHANISM = "dp-fedavg"


def add_receipt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--receipts`` and ``--node-keys`` of ``fedseqrec-audit``."""
    parser.add_argument(
        "--receipts", nargs="+", type=Path, default=[], metavar="NODE_FOLDER",
        help="node folders holding receipts.jsonl: check the run's ledger against them",
    )  # fmt: skip
    parser.add_argument(
        "--node-keys", nargs="+", type=Path, default=[], metavar="KEY.pub",
        help="each node's registered public key, in the order of --receipts "
        "(default: receipts.pub in each node folder)",
    )  # fmt: skip


def check_receipts(report: AuditReport, args: argparse.Namespace) -> None:
    """With ``--receipts``: every disagreement joins the report's failures, a summary its notes."""
    if not args.receipts:
        return
    if args.node_keys and len(args.node_keys) != len(args.receipts):
        raise ReceiptError(
            f"--node-keys: {len(args.node_keys)} key(s) for {len(args.receipts)} node folder(s)"
        )
    found = audit_receipts(args.path, args.receipts, args.node_keys or None)
    report.failures.extend(found.failures)
    report.notes.extend(found.notes)
    report.receipts.extend(  # the HTML report's "receipts" section
        {"who": failure.split(",", 1)[0], "agrees": False, "detail": failure}
        for failure in found.failures
    )
    if not found.failures:
        report.receipts.extend(
            {"who": Path(folder).name, "agrees": True, "detail": "agrees with the ledger"}
            for folder in args.receipts
        )


@dataclass
class ReceiptAudit:
    """What the receipts showed: one sentence per disagreement, and what was checked."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NodeReceipt:
    """A verified receipt of this run with the node it came from."""

    node: str
    receipt: Receipt


@dataclass(frozen=True)
class ServerLedger:
    """This run's server ledger: its dp-fedavg entries by round, and its signed lines."""

    path: Path
    by_round: dict[int, LedgerEntry]
    lines: list[tuple[int, bytes, str, LedgerEntry]]  # line number, line, hash, entry


def audit_receipts(run: Path, folders: list[Path], keys: list[Path] | None = None) -> ReceiptAudit:
    """Check ``run``'s ledger and released checkpoint against the receipts in ``folders``."""
    if not (run / LEDGER_FOLDER).is_dir():
        raise ReceiptError(f"{run}: --receipts needs a run folder (with {LEDGER_FOLDER}/)")
    summary = read_json_object(run / "summary.json") if (run / "summary.json").is_file() else {}
    run_id = str(summary.get("run_id") or run.name)
    ledger = _server_ledger(run / LEDGER_FOLDER / SERVER_LEDGER, run_id)
    audit, received = ReceiptAudit(), []
    for index, folder in enumerate(folders):
        key_path = keys[index] if keys else folder / RECEIPTS_KEY_FILE
        received += _verified_receipts(folder, key_path, run_id, audit)
    if not received:
        audit.failures.append(f"no node folder holds a verified receipt of run {run_id!r}")
        return audit
    offset = _started_round(summary)
    audit.failures += _announcement_failures(received, ledger)
    audit.failures += _model_failures(received, ledger, offset)
    audit.failures += _checkpoint_failures(run, summary, received, audit.notes)
    audit.failures += _signature_failures(received, ledger, audit.notes)
    audit.failures = list(dict.fromkeys(audit.failures))  # a retried message says it once
    source = "--node-keys" if keys else f"each node folder's {RECEIPTS_KEY_FILE}"
    audit.notes.insert(
        0,
        f"receipts: {len(received)} signed receipt(s) of run {run_id!r} from "
        f"{len({item.node for item in received})} node(s), keys from {source}; the ledger "
        f"was checked against every one",
    )
    return audit


def _server_ledger(path: Path, run_id: str) -> ServerLedger:
    """The server's entries (all of them by round; this run's lines for signatures)."""
    if not path.is_file():
        return ServerLedger(path, {}, [])
    ledger = read_ledger_file(path)
    by_round: dict[int, LedgerEntry] = {}
    lines = []
    for entry, number, line, digest in zip(
        ledger.entries, ledger.line_numbers, ledger.lines, ledger.hashes, strict=True
    ):
        if entry.who != SERVER:
            continue
        if entry.mechanism == SERVER_MECHANISM:
            by_round[entry.round] = entry
        if entry.run_id == run_id:
            lines.append((number, line, digest, entry))
    return ServerLedger(path, by_round, lines)


def _started_round(summary: dict[str, Any]) -> int:
    """The round of the checkpoint this run continued from (0 for a fresh run)."""
    started = summary.get("started_from")
    return int(started.get("round", 0)) if isinstance(started, dict) else 0


def _verified_receipts(
    folder: Path, key_path: Path, run_id: str, audit: ReceiptAudit
) -> list[NodeReceipt]:
    """This run's receipts of one node whose signatures verify; the rest are failures."""
    path = folder / RECEIPTS_FILE
    if not path.is_file():
        raise ReceiptError(f"{path}: no receipts file (node config 'receipt-key' unset?)")
    key = load_public_key(key_path)
    expected = fingerprint(key)
    receipts = read_receipts(path)
    node, verified = folder.name, []
    for index, receipt in enumerate(receipts.receipts):
        where = f"{node}: {path.name}, line {receipts.line_numbers[index]}"
        previous = receipts.hashes[index - 1] if index else GENESIS
        if receipt.prev_hash != previous:
            audit.failures.append(f"{where} does not chain to the receipt before it")
        if receipt.key != expected:
            audit.failures.append(
                f"{where} is signed by key {receipt.key or 'none'}, not the node's ({expected})"
            )
        elif not verifies(key, receipt.payload(), receipt.signature):
            audit.failures.append(
                f"{where}: the signature does not verify with the node's key ({expected}): "
                f"the receipt was forged or edited"
            )
        elif receipt.run_id == run_id:
            verified.append(NodeReceipt(f"{node} (node {receipt.node_id})", receipt))
    return verified


def _same(ledger_value: object, receipt_value: object) -> bool:
    if isinstance(ledger_value, float) and isinstance(receipt_value, int | float):
        return math.isclose(ledger_value, receipt_value, rel_tol=1e-12, abs_tol=0.0)
    return ledger_value == receipt_value


def _announcement_failures(received: list[NodeReceipt], ledger: ServerLedger) -> list[str]:
    """Each training round's announcement against the ledger's entry for that round."""
    failures = []
    for item in received:
        receipt = item.receipt
        if receipt.message != "train":
            continue
        entry = ledger.by_round.get(receipt.round)
        if entry is None:
            if receipt.mechanism != NO_MECHANISM:
                failures.append(
                    f"{item.node}, round {receipt.round}: the node was sent this round for "
                    f"training under {receipt.mechanism}, but the ledger has no entry for it"
                )
            continue
        for name in COMPARED:
            recorded, announced = getattr(entry, name), getattr(receipt, name)
            if not _same(recorded, announced):
                failures.append(
                    f"{item.node}, round {receipt.round}: {name} is {recorded} in the ledger "
                    f"but {announced} in the node's receipt"
                )
    return failures


def _model_failures(received: list[NodeReceipt], ledger: ServerLedger, offset: int) -> list[str]:
    """One model per release, and every release a node received is in the ledger."""
    by_round: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    private = bool(ledger.by_round) or any(
        item.receipt.mechanism != NO_MECHANISM for item in received
    )
    failures = []
    for item in received:
        receipt = item.receipt
        by_round[receipt.model_round][receipt.model_sha256].append(item.node)
        if private and receipt.model_round > offset and receipt.model_round not in ledger.by_round:
            failures.append(
                f"{item.node} received the model of round {receipt.model_round} (in the "
                f"{receipt.message} message of round {receipt.round}), but the ledger has no "
                f"entry for round {receipt.model_round}"
            )
    for model_round, hashes in sorted(by_round.items()):
        if len(hashes) > 1:
            shown = "; ".join(
                f"{', '.join(dict.fromkeys(nodes))}: {digest[:12]}"
                for digest, nodes in hashes.items()
            )
            failures.append(
                f"round {model_round}: the nodes received different models as its release ({shown})"
            )
    return failures


def released_model_sha256(checkpoint_path: Path) -> tuple[int, str]:
    """The round of a checkpoint and the hash of its model as the server sends it."""
    from common.federation.checkpoints import load_checkpoint
    from common.federation.messages import model_to_arrays

    checkpoint = load_checkpoint(checkpoint_path)
    arrays = model_to_arrays(checkpoint.build_model())
    return checkpoint.round, arrays_sha256({name: arrays[name].numpy() for name in arrays})


def _checkpoint_failures(
    run: Path, summary: dict[str, Any], received: list[NodeReceipt], notes: list[str]
) -> list[str]:
    """The released checkpoint's arrays are the model the nodes received for its round."""
    path = run / str(summary.get("released_checkpoint") or "checkpoint.pt")
    if not path.is_file():
        notes.append(f"{path} is missing: the released model was not compared with the receipts")
        return []
    model_round, digest = released_model_sha256(path)
    matching = [item for item in received if item.receipt.model_round == model_round]
    if not matching:
        notes.append(f"no receipt holds the released model of round {model_round} ({path.name})")
    return [
        f"{item.node} received the model of round {model_round} with hash "
        f"{item.receipt.model_sha256[:12]}, but the released {path.name}'s arrays hash to "
        f"{digest[:12]}"
        for item in matching
        if item.receipt.model_sha256 != digest
    ]


def _signature_failures(
    received: list[NodeReceipt], ledger: ServerLedger, notes: list[str]
) -> list[str]:
    """Every entry of this run is signed by the ledger key the nodes were announced."""
    announced = {item.receipt.server_key for item in received if item.receipt.server_key}
    if not announced:
        notes.append("no node recorded a ledger key: the ledger's signatures were not checked")
        return []
    try:
        keys = {
            fingerprint(key): key
            for key in (public_key_from_text(text, "server_key") for text in announced)
        }
    except SignatureError as error:
        return [f"the ledger key announced to the nodes is unreadable: {error}"]
    if len(keys) > 1:
        return [f"the nodes were announced different ledger keys ({', '.join(sorted(keys))})"]
    (key,) = keys.values()
    signatures = read_ledger_signatures(ledger.path)
    failures = []
    for number, line, digest, _ in ledger.lines:
        where = f"{ledger.path.name}, line {number}"
        record = signatures.get(digest)
        if record is None:
            failures.append(f"{where} is not signed by the ledger key ({fingerprint(key)})")
        elif not verifies(key, LEDGER_DOMAIN + line, record.get("signature")):
            failures.append(
                f"{where}: its signature does not verify with the ledger key the nodes were "
                f"announced ({fingerprint(key)})"
            )
    if not failures:
        notes.append(
            f"{ledger.path.name}: all {len(ledger.lines)} entries of this run are signed by the "
            f"ledger key the nodes recorded ({fingerprint(key)})"
        )
    return failures
