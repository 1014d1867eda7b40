"""The deployment credentials: a CA-signed SuperLink certificate, Flower-readable node keys."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from deploy.certificates import create_credentials, main


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path: Path) -> None:
    paths = create_credentials(tmp_path / "keys", nodes=2, hosts=["link.example.org", "10.0.0.5"])

    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    ]
    key = load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert paths.server_key.stat().st_mode & 0o777 == 0o600


def test_node_keys_are_what_flower_node_auth_reads(tmp_path: Path) -> None:
    paths = create_credentials(tmp_path, nodes=2)

    private = load_ssh_private_key(paths.node_private_keys[1].read_bytes(), password=None)
    registered = try_load_public_key(paths.node_public_keys[1])  # `flwr supernode register`

    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert len(registered) > 0
    assert [p.name for p in paths.node_public_keys] == ["node-1.pub", "node-2.pub"]


def test_existing_files_are_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--nodes", "1"]) == 0
    before = (tmp_path / "ca.key").read_bytes()

    code = main([str(tmp_path), "--nodes", "1"])

    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines == [f"error: {tmp_path / 'ca.crt'} already exists; refusing to overwrite "
                     "(use an empty folder)"]  # fmt: skip
    assert (tmp_path / "ca.key").read_bytes() == before


def test_the_ledger_key_pair_signs_and_verifies(tmp_path: Path) -> None:
    from common.privacy.signing import Signer, load_public_key, verifies

    paths = create_credentials(tmp_path, nodes=1)

    signer = Signer.from_file(paths.ledger_key)
    public = load_public_key(paths.ledger_public_key)
    assert paths.ledger_key.stat().st_mode & 0o777 == 0o600
    assert signer.key.curve.name == "secp384r1"
    assert verifies(public, b"entry", signer.sign(b"entry"))
    assert not verifies(public, b"entry", signer.sign(b"another entry"))
