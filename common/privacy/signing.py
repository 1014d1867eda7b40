"""ECDSA signatures: a node signs its receipts, the server signs its ledger entries.

Keys are the deployment's own (:mod:`deploy.certificates`): a node signs with the key pair
of Flower's node authentication (ECDSA P-384, OpenSSH format), whose public half is
registered at the SuperLink; the server signs with ``ledger-key``, a key pair of its own.
Signatures are ECDSA over a domain-separated payload (so a receipt can never pass for a
ledger entry, nor either for a node-authentication message), hashed with SHA-256/384/512
by curve size, DER-encoded in base64. A key is named by its OpenSSH fingerprint
(``SHA256:...``, what ``ssh-keygen -lf`` prints).

The server's signatures live beside its ledger, one JSON line per entry in
``<ledger>.sig`` (``{"entry": line hash, "key": fingerprint, "signature": ...}``), so the
ledger's lines, its hash chain and :func:`~common.privacy.ledger.read_ledger` stay as
they were.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.storage.chained_log import append_line, line_hash

LEDGER_DOMAIN = b"fedseqrec ledger entry v1\n"
RECEIPT_DOMAIN = b"fedseqrec node receipt v1\n"
SIGNATURES_SUFFIX = ".sig"


class SignatureError(ValueError):
    """A key or a signature file cannot be read; the message names the file."""


def _curve_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    """SHA-2 of the curve's strength: P-256 -> SHA-256, P-384 -> SHA-384, else SHA-512."""
    if curve.key_size <= 256:
        return hashes.SHA256()
    return hashes.SHA384() if curve.key_size <= 384 else hashes.SHA512()


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA private key from an OpenSSH or PEM file (unencrypted)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise SignatureError(f"{path}: cannot read the key ({error.strerror})") from None
    try:
        if b"OPENSSH PRIVATE KEY" in raw:
            key: Any = serialization.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as error:
        raise SignatureError(f"{path}: not an unencrypted private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError(f"{path}: an ECDSA key is needed, got {type(key).__name__}")
    return key


def public_key_from_text(text: str, where: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key from OpenSSH text (``ecdsa-sha2-nistp384 AAAA... comment``) or PEM."""
    data = text.strip().encode()
    try:
        if data.startswith(b"-----BEGIN"):
            key: Any = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(b" ".join(data.split()[:2]))
    except (ValueError, TypeError, IndexError) as error:
        raise SignatureError(f"{where}: not a public key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"{where}: an ECDSA key is needed, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key from a ``.pub`` (OpenSSH) or PEM file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SignatureError(f"{path}: cannot read the public key ({error})") from None
    return public_key_from_text(text, str(path))


def openssh_public(key: ec.EllipticCurvePublicKey) -> str:
    """The public key as one OpenSSH line (``ecdsa-sha2-nistp384 AAAA...``)."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """OpenSSH's ``SHA256:`` fingerprint of a public key."""
    blob = base64.b64decode(openssh_public(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def verifies(key: ec.EllipticCurvePublicKey, payload: bytes, signature: object) -> bool:
    """Whether ``signature`` (base64 DER) is ``key``'s ECDSA signature of ``payload``."""
    if not isinstance(signature, str):
        return False
    try:
        key.verify(
            base64.b64decode(signature, validate=True), payload, ec.ECDSA(_curve_hash(key.curve))
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """A private key with its public half and fingerprint, ready to sign."""

    key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """The signer of an OpenSSH or PEM private key file."""
        return cls(load_private_key(path))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        return self.key.public_key()

    @property
    def public_text(self) -> str:
        """The public key as one OpenSSH line."""
        return openssh_public(self.public_key)

    @property
    def fingerprint(self) -> str:
        """The public key's ``SHA256:`` fingerprint."""
        return fingerprint(self.public_key)

    def sign(self, payload: bytes) -> str:
        """ECDSA signature of ``payload``, DER in base64."""
        signature = self.key.sign(payload, ec.ECDSA(_curve_hash(self.key.curve)))
        return base64.b64encode(signature).decode()


def signatures_path(ledger: Path) -> Path:
    """The sidecar file that holds the signatures of a ledger's entries."""
    return ledger.with_name(ledger.name + SIGNATURES_SUFFIX)


def ledger_signing(ledger: Path, signer: Signer) -> Callable[[bytes], None]:
    """What to do after a ledger line is written: sign it into the sidecar file."""

    def sign_line(line: bytes) -> None:
        record = {
            "entry": line_hash(line),
            "key": signer.fingerprint,
            "signature": signer.sign(LEDGER_DOMAIN + line),
        }
        append_line(signatures_path(ledger), json.dumps(record, sort_keys=True).encode())

    return sign_line


def read_ledger_signatures(ledger: Path) -> dict[str, dict[str, Any]]:
    """The signatures of a ledger's entries by entry hash ({} when it has none)."""
    path = signatures_path(ledger)
    if not path.is_file():
        return {}
    found: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SignatureError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("entry"), str):
            raise SignatureError(f"{path}, line {number}: field 'entry' is missing")
        found[record["entry"]] = record
    return found
