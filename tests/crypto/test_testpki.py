"""The test PKI: certificate profiles, CRLs, and TLS with server/operator certs."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.crypto.conftest import NOW, People

if TYPE_CHECKING:
    from pathlib import Path

    from mssante.crypto.testpki import Issued


def eku(issued: Issued) -> set[x509.ObjectIdentifier]:
    return set(
        issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_server_certificate_fits_a_loopback_tls_server(people: People) -> None:
    server = people.pki.server()
    san = server.cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value

    assert isinstance(server.key, rsa.RSAPrivateKey)
    assert server.key.key_size == 2048
    assert eku(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert server.chain == (people.pki.servers.cert,)
    assert server.fullchain_pem.count(b"BEGIN CERTIFICATE") == 2


def test_operator_certificate_is_tls_client_and_server_with_a_whitelist_dn(
    people: People,
) -> None:
    operator = people.pki.operator(
        "mail.operator.example", organisation="OP", unit="MSS"
    )

    assert operator.cert.subject.rfc4514_string() == (
        "CN=mail.operator.example,OU=MSS,O=OP,C=FR"
    )
    assert eku(operator) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert isinstance(operator.key, rsa.RSAPrivateKey)


def test_ec_practitioner_can_only_sign(people: People) -> None:
    ku = people.alice_ec.cert.extensions.get_extension_for_class(x509.KeyUsage).value

    assert isinstance(people.alice_ec.key, ec.EllipticCurvePrivateKey)
    assert ku.digital_signature
    assert not ku.key_encipherment


def test_crls_list_what_was_revoked_and_nothing_else(people: People) -> None:
    crls = [x509.load_der_x509_crl(c) for c in people.pki.crls()]
    persons = next(c for c in crls if c.issuer == people.pki.persons.cert.subject)

    assert len(crls) == 4
    assert persons.get_revoked_certificate_by_serial_number(
        people.revoked.cert.serial_number
    )
    assert (
        persons.get_revoked_certificate_by_serial_number(
            people.alice.cert.serial_number
        )
        is None
    )
    assert all(c.is_signature_valid(people.pki.root.key.public_key()) for c in crls[:1])


def test_expired_certificate_ended_before_the_reference_time(people: People) -> None:
    assert people.expired.cert.not_valid_after_utc < NOW
    assert (
        people.alice.cert.not_valid_before_utc
        < NOW
        < people.alice.cert.not_valid_after_utc
    )


def test_openssl_accepts_server_and_operator_for_their_purposes(
    people: People, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(people.pki.root_pem)
    (tmp_path / "chain.pem").write_bytes(people.pki.servers.cert_pem)
    for issued, purpose in [
        (people.pki.server(), "sslserver"),
        (people.pki.operator(), "sslclient"),
        (people.pki.operator(), "sslserver"),
    ]:
        (tmp_path / "leaf.pem").write_bytes(issued.cert_pem)
        done = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(tmp_path / "ca.pem"),
                "-untrusted",
                str(tmp_path / "chain.pem"),
                "-purpose",
                purpose,
                str(tmp_path / "leaf.pem"),
            ],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _context(
    purpose: ssl.Purpose, people: People, tmp_path: Path, issued: Issued, name: str
) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cadata=people.pki.root_pem.decode())
    (tmp_path / f"{name}.pem").write_bytes(issued.fullchain_pem)
    (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
    context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
    return context


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_mutual_tls_handshake_with_server_and_operator_certificates(
    people: People, tmp_path: Path, host: str
) -> None:
    server_ctx = _context(
        ssl.Purpose.CLIENT_AUTH, people, tmp_path, people.pki.server(), "s"
    )
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = _context(
        ssl.Purpose.SERVER_AUTH, people, tmp_path, people.pki.operator(), "c"
    )
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)

    done = {"c": False, "s": False}
    for _ in range(10):
        for key, end, out, peer_in in (
            ("c", client, c_out, s_in),
            ("s", server, s_out, c_in),
        ):
            if not done[key]:
                try:
                    end.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            break

    assert all(done.values())
    peer = server.getpeercert()
    assert peer is not None
    assert ("commonName", "mail.operator.example") in [
        rdn[0] for rdn in peer["subject"]
    ]
