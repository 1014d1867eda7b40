"""Create a CA, a SuperLink TLS certificate and SuperNode key pairs for a small deployment.

``python -m deploy.certificates OUT_DIR --nodes 2 [--host superlink.example.org ...]``

Writes into ``OUT_DIR`` (created; existing files are never overwritten):

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority. Every SuperNode and the
  ``flwr`` CLI trust ``ca.crt`` (``--root-certificates``, ``root-certificates``); keep
  ``ca.key`` offline, it can sign more server certificates.
- ``server.pem`` / ``server.key``: the SuperLink's TLS certificate, signed by the CA,
  valid for ``localhost``, ``127.0.0.1`` and every ``--host`` (DNS name or IP address).
- ``node-<i>`` / ``node-<i>.pub``: one ECDSA P-384 key pair per SuperNode in OpenSSH
  format, what Flower's node authentication expects (``ssh-keygen -t ecdsa -b 384``
  gives the same): the private key stays on the node (``--auth-supernode-private-key``),
  the public key is registered at the SuperLink (``flwr supernode register``). A node
  also signs its receipts with it (node config ``receipt-key``,
  :mod:`common.privacy.node_receipts`).
- ``ledger-key`` / ``ledger-key.pub``: the server's key pair (ECDSA P-384, OpenSSH format)
  that signs every entry of its privacy ledger (run config ``ledger-key``); the server
  announces the public key to the nodes, whose receipts record it.

For a real deployment use certificates from your organisation's CA instead; only the
node key pairs are specific to Flower.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class CertificateError(Exception):
    """The certificates cannot be written; the message says why."""


@dataclass(frozen=True)
class DeploymentCredentials:
    """Paths of everything :func:`create_credentials` wrote."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]
    ledger_key: Path
    ledger_public_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedseqrec"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses as IP SANs, everything else as DNS names (duplicates removed)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, payload: bytes, secret: bool) -> None:
    """Write a new file (never overwriting); secrets are readable by the owner only."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    descriptor = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(payload)


def create_credentials(
    out_dir: Path, nodes: int, hosts: list[str] | None = None, days: int = 365
) -> DeploymentCredentials:
    """Write CA, SuperLink certificate and ``nodes`` SuperNode key pairs into ``out_dir``."""
    if nodes < 0:
        raise CertificateError(f"--nodes must be >= 0, got {nodes}")
    if days < 1:
        raise CertificateError(f"--days must be >= 1, got {days}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = DeploymentCredentials(
        ca_certificate=out_dir / "ca.crt",
        ca_key=out_dir / "ca.key",
        server_certificate=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        node_private_keys=tuple(out_dir / f"node-{i}" for i in range(1, nodes + 1)),
        node_public_keys=tuple(out_dir / f"node-{i}.pub" for i in range(1, nodes + 1)),
        ledger_key=out_dir / "ledger-key",
        ledger_public_key=out_dir / "ledger-key.pub",
    )
    every = [paths.ca_certificate, paths.ca_key, paths.server_certificate, paths.server_key,
             paths.ledger_key, paths.ledger_public_key]  # fmt: skip
    existing = [
        p for p in [*every, *paths.node_private_keys, *paths.node_public_keys] if p.exists()
    ]
    if existing:
        raise CertificateError(
            f"{existing[0]} already exists; refusing to overwrite (use an empty folder)"
        )
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("fedseqrec deployment CA"))
        .issuer_name(_name("fedseqrec deployment CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = [*DEFAULT_HOSTS, *(hosts or [])]
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(all_hosts[-1]))
        .issuer_name(ca_certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_subject_alternative_names(all_hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM), False)
    _write(paths.ca_key, _pem_key(ca_key), True)
    _write(
        paths.server_certificate, server_certificate.public_bytes(serialization.Encoding.PEM), False
    )
    _write(paths.server_key, _pem_key(server_key), True)
    for private_path, public_path in zip(
        paths.node_private_keys, paths.node_public_keys, strict=True
    ):
        _write_key_pair(private_path, public_path)
    _write_key_pair(paths.ledger_key, paths.ledger_public_key)
    return paths


def _write_key_pair(private_path: Path, public_path: Path) -> None:
    """A new ECDSA P-384 key pair in OpenSSH format (``ssh-keygen -t ecdsa -b 384``)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(private_path, private, True)
    _write(public_path, public + f" fedseqrec-{private_path.name}\n".encode(), False)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the certificate command."""
    parser = argparse.ArgumentParser(
        prog="fedseqrec-certificates",
        description="Create a CA, a SuperLink TLS certificate and SuperNode key pairs.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write into (files are not replaced)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs (default 2)")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra DNS name or IP address of the SuperLink (repeatable)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on success, one ``error:`` line and exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        paths = create_credentials(args.out_dir, args.nodes, args.host, args.days)
    except (CertificateError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {paths.ca_certificate.name}, {paths.server_certificate.name} "
        f"(hosts: {', '.join(dict.fromkeys([*DEFAULT_HOSTS, *args.host]))}) and "
        f"{len(paths.node_private_keys)} node key pair(s) and the ledger key pair to "
        f"{args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
