"""A node's receipts: its own signed, append-only record of what the server sent it.

The server's ledger is written by the party an audit is about; a node's receipts are the
other side's account. An edge node (node config ``receipt-key``) appends one
:class:`Receipt` to ``receipts.jsonl`` in its node folder for every training and
evaluation message, before it replies. A receipt binds:

- what the server **announced** for the round of a training message: the ledger's run
  id, the round (offset included), the mechanism, noise multiplier, clip norm, sampling
  rate and population (delta's rule), and the public key that signs the server's ledger;
- the **model** it received, by :func:`arrays_sha256`. A node never sees a round's release
  in that round: the arrays of training round ``r`` are the global model after round
  ``r - 1`` (the release of round ``r - 1``; the initial model when that is the run's
  start), those of an evaluation message of round ``r`` the model after round ``r`` (the
  final evaluation sends the released model). So ``model_round`` is ``r - 1`` for
  ``train`` and ``r`` for ``evaluate``, and round ``r``'s release is vouched for by the
  receipts of the next round's training or of the evaluation after round ``r``.

Each receipt carries the SHA-256 of the line before it (``prev_hash``, as in the ledger)
and the node's ECDSA signature (:mod:`common.privacy.signing`) over all other fields,
made with its node-authentication key, so the server can neither forge nor edit one. The
node also writes its public key to ``receipts.pub`` beside them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.privacy.signing import RECEIPT_DOMAIN, Signer
from common.storage.chained_log import GENESIS, append_chained, line_hash

RECEIPTS_FILE = "receipts.jsonl"
RECEIPTS_KEY_FILE = "receipts.pub"
MESSAGES = ("train", "evaluate")
NO_MECHANISM = "none"  # the server announced no noise of its own


class ReceiptError(ValueError):
    """A receipts file cannot be read; the message names the file, the line and the field."""


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays, in name order: each name, dtype, shape and C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        header = f"{name}\0{value.dtype.str}\0{list(value.shape)}\0"
        digest.update(header.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


_OPTIONAL_NUMBERS = ("noise_multiplier", "clip_norm", "sampling_rate")


@dataclass(frozen=True)
class Receipt:
    """What one message from the server told, and gave, this node (module docstring)."""

    run_id: str
    node_id: int
    message: str
    round: int
    model_round: int
    model_sha256: str
    mechanism: str = NO_MECHANISM
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    sampling_rate: float | None = None
    population: int | None = None
    server_key: str | None = None  # the OpenSSH public key announced for the ledger
    time: float = 0.0
    key: str = ""  # fingerprint of the node key that signed
    prev_hash: str = GENESIS
    signature: str = ""

    def __post_init__(self) -> None:
        for name in ("run_id", "mechanism", "model_sha256", "key", "prev_hash", "signature"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"field '{name}' must be a string")
        for name in ("node_id", "round", "model_round"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"field '{name}' must be an integer, got {value!r}")
        if self.message not in MESSAGES:
            raise ValueError(f"field 'message' must be one of {', '.join(MESSAGES)}")
        for name in _OPTIONAL_NUMBERS:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"field '{name}' must be a number or null, got {value!r}")
        population = self.population
        if population is not None and (
            isinstance(population, bool) or not isinstance(population, int)
        ):
            raise ValueError(f"field 'population' must be an integer or null, got {population!r}")
        if self.server_key is not None and not isinstance(self.server_key, str):
            raise ValueError("field 'server_key' must be a string or null")

    def payload(self) -> bytes:
        """What the node signs: every field but the signature, as canonical JSON."""
        body = dataclasses.asdict(self)
        body.pop("signature")
        return RECEIPT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FIELDS = tuple(field.name for field in dataclasses.fields(Receipt))


def append_receipt(folder: Path, receipt: Receipt, signer: Signer) -> Receipt:
    """Chain, sign and durably append ``receipt`` to ``folder/receipts.jsonl``; as written."""
    written: list[Receipt] = []

    def render(head: str) -> str:
        chained = dataclasses.replace(receipt, key=signer.fingerprint, prev_hash=head)
        written.append(dataclasses.replace(chained, signature=signer.sign(chained.payload())))
        return written[-1].to_json()

    append_chained(folder / RECEIPTS_FILE, render)
    public = folder / RECEIPTS_KEY_FILE
    if not public.exists():
        public.write_text(signer.public_text + "\n")
    return written[-1]


@dataclass(frozen=True)
class ReceiptFile:
    """A node's receipts as read: each with its line number and the hash of its line."""

    path: Path
    receipts: list[Receipt]
    line_numbers: list[int]
    hashes: list[str]


def read_receipts(path: Path) -> ReceiptFile:
    """Every receipt of a ``receipts.jsonl``; a malformed line raises :class:`ReceiptError`.

    A last line cut short by a crash mid-write (no newline after it) is skipped: its
    message was never answered.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ReceiptError(f"{path}: cannot read the receipts ({error.strerror})") from None
    found = ReceiptFile(Path(path), [], [], [])
    chunks = raw.split(b"\n")
    for number, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        try:
            receipt = _receipt_of(json.loads(chunk))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number == len(chunks):  # cut short by a crash: never answered
                continue
            raise ReceiptError(f"{path}, line {number}: not JSON ({error})") from None
        except (TypeError, ValueError) as error:
            raise ReceiptError(f"{path}, line {number}: {error}") from None
        found.receipts.append(receipt)
        found.line_numbers.append(number)
        found.hashes.append(line_hash(chunk))
    return found


def _receipt_of(record: Any) -> Receipt:
    if not isinstance(record, dict):
        raise ValueError("a receipt must be a JSON object")
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise ValueError(f"field '{missing[0]}' is missing")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"field '{unknown[0]}' is not a receipt field")
    return Receipt(**record)
